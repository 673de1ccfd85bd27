#!/usr/bin/env bash
# Train the bundled demo model (assets/hmar-emoji64) on one or two GPUs.
#
# From scratch (tokenizer, stage 1, stage 2; what gave the first shipped model on one H200):
#   NPROC=1 TOK_MINUTES=4.5 STAGE1_MINUTES=6 STAGE2_MINUTES=2 bash scripts/train_demo_gpu.sh
# Continue from an exported model folder (keeps its tokenizer; stage 1 restarts from its
# weights with a fresh optimiser and its own warm-up and decay, then a new stage 2):
#   INIT_MODEL=assets/hmar-emoji64 STAGE1_MINUTES=5 STAGE2_MINUTES=4.5 \
#     bash scripts/train_demo_gpu.sh
# STAGE1_MINUTES=0 with INIT_MODEL skips stage 1: stage 2 then continues the model's own mask
# branch (init_mask_from_ns=false) on its unchanged base and ns branch (what ran in session 4,
# for 2.8 minutes on an H100, 210 steps: too short to measure; see assets/MODEL_CARD.md):
#   INIT_MODEL=assets/hmar-emoji64 STAGE1_MINUTES=0 STAGE2_MINUTES=10 bash scripts/train_demo_gpu.sh
# GROW="4 9" with INIT_MODEL first grows that model by identity base blocks at those indices
# (python -m train.grow; session 12) and continues from the grown model (its depth passed on):
#   INIT_MODEL=assets/hmar-emoji64 GROW="4 9" STAGE1_MINUTES=4 STAGE2_MINUTES=2.5 \
#     STAGE2_CONTINUE_MASK=1 EXTRA="--set token_cache_crops=8" bash scripts/train_demo_gpu.sh
# FINE_DATA=<.npz of python -m train.data fine> with INIT_MODEL trains on finer classes: the
# model's class table is split first (python -m train.split_classes; every fine class starts as
# its parent class) and both stages read that data (session 13):
#   python -m train.data fine --data data/emoji64 --out data/emoji64-fine
#   INIT_MODEL=assets/hmar-emoji64 FINE_DATA=data/emoji64-fine/emoji64-fine.npz \
#     STAGE1_MINUTES=4 STAGE2_MINUTES=2 STAGE2_CONTINUE_MASK=1 bash scripts/train_demo_gpu.sh
# Resume a run that was cut off (same variables again, plus RESUME=1): every stage continues
# from the newest checkpoint in its output folder; a stage whose model/ is already exported is
# skipped.
# Needs data/emoji64/emoji64.npz (python -m train.data emoji --out data/emoji64 --npz).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/emoji64/emoji64.npz}
RUNS=${RUNS:-runs}
NPROC=${NPROC:-1}
TOK_MINUTES=${TOK_MINUTES:-4}
STAGE1_MINUTES=${STAGE1_MINUTES:-6}
STAGE2_MINUTES=${STAGE2_MINUTES:-2}
STAGE2_STEPS=${STAGE2_STEPS:-6000}    # upper bound; --max-minutes shortens the schedule
INIT_MODEL=${INIT_MODEL:-}            # continue from this model folder (fresh optimiser)
GROW=${GROW:-}                        # new base-block indices: grow INIT_MODEL first
FINE_DATA=${FINE_DATA:-}              # relabelled data: split INIT_MODEL's classes, train on it
STAGE1_LR=${STAGE1_LR:-}              # peak lr of stage 1 (YAML: 6e-4; 3e-4 when continuing)
RESUME=${RESUME:-0}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}                      # more flags for every train.hmar call (e.g. smoke tests)
# Both stages keep their token cache in this file: stage 2 (and a resumed or repeated run) loads
# it after re-encoding a few probe samples, instead of encoding every crop again. In session 11
# (one H100) encoding 10 k images x 32 crops took ~3 minutes per stage: a 3-minute stage 2
# spent its whole budget on it (6 steps). TOKEN_CACHE= (empty) turns it off.
TOKEN_CACHE=${TOKEN_CACHE-$RUNS/token-cache.safetensors}
cache=()
[[ -n "$TOKEN_CACHE" ]] && cache=(--set "token_cache_file=$TOKEN_CACHE")
# Stage 2 runs eager unless STAGE2_COMPILE=1: in session 4 (H100, a quality.py run beside it)
# the torch.compile of the first stage-2 step took the whole 3.5-minute budget (step 1 of 6000),
# while eager stage 2 runs at 337 ms per step (~760 img/s) from its first minute. Compile only
# pays for runs of many minutes.
STAGE2_COMPILE=${STAGE2_COMPILE:-0}
stage2_speed=()
[[ "$STAGE2_COMPILE" == 1 ]] || stage2_speed=(--set speed.compile_blocks=false \
  --set speed.compile_inputs=false --set speed.compile_loss=false)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
resume=()
[[ "$RESUME" == 1 ]] && resume=(--resume)
done_stage() { [[ "$RESUME" == 1 && -f "$1/config.json" ]]; }

# 0. a deeper model that starts as INIT_MODEL (train.grow prints the --set flags of its depth)
if [[ -n "$GROW" ]]; then
  [[ -n "$INIT_MODEL" ]] || { echo "GROW needs INIT_MODEL" >&2; exit 2; }
  grown=$RUNS/grown-model
  rm -rf "$grown"
  arch=$($PY -m train.grow --model "$INIT_MODEL" --out "$grown" --insert $GROW)
  echo "grew $INIT_MODEL at base blocks $GROW: $grown ($arch)"
  EXTRA="$arch $EXTRA"
  INIT_MODEL=$grown
fi
# 0b. finer classes that start as INIT_MODEL's (train.split_classes prints the new class count)
if [[ -n "$FINE_DATA" ]]; then
  [[ -n "$INIT_MODEL" ]] || { echo "FINE_DATA needs INIT_MODEL" >&2; exit 2; }
  split=$RUNS/fine-init-model
  rm -rf "$split"
  classes=$($PY -m train.split_classes --model "$INIT_MODEL" --data "$FINE_DATA" --out "$split")
  echo "split the classes of $INIT_MODEL by $FINE_DATA: $split ($classes)"
  EXTRA="$classes $EXTRA"
  INIT_MODEL=$split
  DATA=$FINE_DATA
fi
# 1. tokenizer (one GPU), unless continuing from a model folder (its tokenizer is kept)
if [[ -n "$INIT_MODEL" ]]; then
  TOKENIZER=$INIT_MODEL
  STAGE1_LR=${STAGE1_LR:-3e-4}
  stage1_init=(--init-from "$INIT_MODEL")
  echo "continuing from $INIT_MODEL: its tokenizer, its transformer weights, a fresh optimiser"
else
  TOKENIZER=$RUNS/emoji64-tokenizer/tokenizer
  stage1_init=()
  if ! done_stage "$TOKENIZER"; then
    CUDA_VISIBLE_DEVICES=${TOK_GPU:-0} $PY -m train.tokenizer \
      --config train/configs/emoji64-tokenizer.yaml --data "$DATA" \
      --out "$RUNS/emoji64-tokenizer" --max-minutes "$TOK_MINUTES" --device "$DEVICE" \
      --set run.progress_bar=false "${resume[@]}"
  fi
fi
# STAGE2_CONTINUE_MASK=1 with INIT_MODEL and stage 1: stage 2 continues INIT_MODEL's mask branch
# (stage 1 trains the base and ns branch only and exports the mask branch unchanged) on the new
# base, instead of starting it again as a copy of the ns branch: for short stage-2 budgets.
STAGE2_CONTINUE_MASK=${STAGE2_CONTINUE_MASK:-0}
stage1_lr=()
[[ -n "$STAGE1_LR" ]] && stage1_lr=(--set "optim.lr=$STAGE1_LR")
# 2. HMAR stage 1: next-scale prediction (DDP over NPROC GPUs)
STAGE2_INIT=$RUNS/emoji64-hmar/model
stage2_mask=()
run_stage1=1
if [[ -n "$INIT_MODEL" && "$STAGE1_MINUTES" == 0 ]]; then
  STAGE2_INIT=$INIT_MODEL
  run_stage1=0
  stage2_mask=(--set init_mask_from_ns=false)
  echo "no stage 1: stage 2 continues the mask branch of $INIT_MODEL"
elif [[ "$STAGE2_CONTINUE_MASK" == 1 ]]; then
  stage2_mask=(--set init_mask_from_ns=false)
  echo "stage 2 continues the mask branch of $INIT_MODEL on the new base"
fi
done_stage "$RUNS/emoji64-hmar/model" && run_stage1=0
if [[ "$run_stage1" == 1 ]]; then
  $PY -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m train.hmar \
    --config train/configs/emoji64-hmar.yaml --data "$DATA" \
    --tokenizer "$TOKENIZER" --out "$RUNS/emoji64-hmar" "${stage1_init[@]}" \
    --max-minutes "$STAGE1_MINUTES" --device "$DEVICE" --set run.progress_bar=false \
    "${stage1_lr[@]}" "${cache[@]}" "${resume[@]}" $EXTRA
fi
# 3. HMAR stage 2: masked prediction (base blocks and ns branch frozen; the mask-ratio
#    distribution is in the YAML: mask_ratio_min/max, mask_per_sample)
if ! done_stage "$RUNS/emoji64-hmar-stage2/model"; then
  $PY -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m train.hmar \
    --config train/configs/emoji64-hmar.yaml --data "$DATA" --stage stage2 \
    --tokenizer "$TOKENIZER" --init-from "$STAGE2_INIT" "${stage2_mask[@]}" \
    --out "$RUNS/emoji64-hmar-stage2" --steps "$STAGE2_STEPS" --max-minutes "$STAGE2_MINUTES" \
    --device "$DEVICE" --set run.progress_bar=false "${stage2_speed[@]}" "${cache[@]}" \
    "${resume[@]}" $EXTRA
fi
echo "DEMO TRAINING DONE: $RUNS/emoji64-hmar-stage2/model"
