#!/usr/bin/env bash
# Train the bundled demo model (assets/hmar-emoji64) on one or two GPUs.
#   NPROC=2 bash scripts/train_demo_gpu.sh     # what was run on 2x H200 for the shipped model
# Needs data/emoji64/emoji64.npz (python -m train.data emoji --out data/emoji64 --npz).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/emoji64/emoji64.npz}
RUNS=${RUNS:-runs}
NPROC=${NPROC:-1}
TOK_MINUTES=${TOK_MINUTES:-4}
STAGE1_MINUTES=${STAGE1_MINUTES:-6}
STAGE2_MINUTES=${STAGE2_MINUTES:-2}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# 1. tokenizer (one GPU)
CUDA_VISIBLE_DEVICES=${TOK_GPU:-0} $PY -m train.tokenizer \
  --config train/configs/emoji64-tokenizer.yaml --data "$DATA" \
  --out "$RUNS/emoji64-tokenizer" --max-minutes "$TOK_MINUTES" --device cuda \
  --set run.progress_bar=false
# 2. HMAR stage 1: next-scale prediction (DDP over NPROC GPUs)
$PY -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m train.hmar \
  --config train/configs/emoji64-hmar.yaml --data "$DATA" \
  --tokenizer "$RUNS/emoji64-tokenizer/tokenizer" --out "$RUNS/emoji64-hmar" \
  --max-minutes "$STAGE1_MINUTES" --device cuda --set run.progress_bar=false
# 3. HMAR stage 2: masked prediction (base blocks and ns branch frozen)
$PY -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m train.hmar \
  --config train/configs/emoji64-hmar.yaml --data "$DATA" --stage stage2 \
  --tokenizer "$RUNS/emoji64-tokenizer/tokenizer" --init-from "$RUNS/emoji64-hmar/model" \
  --out "$RUNS/emoji64-hmar-stage2" --steps 3000 --max-minutes "$STAGE2_MINUTES" \
  --device cuda --set run.progress_bar=false
echo "DEMO TRAINING DONE: $RUNS/emoji64-hmar-stage2/model"
