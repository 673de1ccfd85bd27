#!/usr/bin/env bash
# One training round of the demo model on the device machine, in the fewest device calls.
#
# The data does not fit beside the tracked tree in one call's 64 MiB, so it travels as two parts
# (bash scripts/pack_data_parts.sh gpujob/xz; gpujob/ git-ignored), in back-to-back calls on one
# warm machine (it keeps /tmp between them, and goes back after ~30 s idle):
#   call 1: bash scripts/demo_round_gpu.sh stash gpujob/xz/part_aa          carry: that part
#   call 2: S1=4 S2=2 EXTRA="--set run.class_balanced=true" \
#           bash scripts/demo_round_gpu.sh start gpujob/xz/part_ab gpujob/xz/raw.sha256
#                                                      carry: part_ab and raw.sha256
#   call 3+: WAIT=540 bash scripts/demo_round_gpu.sh finish       (repeat until it evaluates)
# Finer classes (python -m train.data fine, train.split_classes): FINE=<min images> on `start`,
# which then also needs images.csv of the data folder (its third argument; carry it), and on
# `finish` (the evaluation scores the fine model in the 51 classes, --label-data).
# `start` joins the parts into $WORK/emoji64/emoji64.npz, checks its sha256 and starts
# scripts/train_demo_gpu.sh under setsid (INIT_MODEL, default the bundled model; S1, S2: stage
# minutes; CROPS: cached crop epochs; EXTRA: more --set flags for both stages; GROW: see that
# script), then returns after START_WAIT seconds with the log's tail. `finish` waits up to WAIT
# seconds for the round; once it is done it evaluates the model with the bundled model's sampler
# (scripts/eval_demo_gpu.sh: the speed/quality curve at CURVE_STEPS, class edits on EDITS
# images at strength 1) and puts into $OUT (at most 8 files come back): train.log, eval.log,
# the reports, the model's config.json and its transformer shards (the tokenizer is the
# bundled one unless the round trained its own).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?usage: demo_round_gpu.sh stash PART | start PART SHA256 [IMAGES_CSV] | finish}
shift
WORK=${WORK:-/tmp/demo-round}
PY=${PYTHON:-python3}
mkdir -p "$WORK/xz"
case $cmd in
  stash)
    cp "${1:?stash needs a part}" "$WORK/xz/"
    ls -l "$WORK/xz"
    nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true ;;
  start)
    cp "${1:?start needs the last part}" "$WORK/xz/"
    cp "${2:?start needs raw.sha256}" "$WORK/xz/raw.sha256"
    mkdir -p "$WORK/emoji64"
    cat "$WORK"/xz/part_* | xz -d -T4 > "$WORK/emoji64/emoji64.npz"
    (cd "$WORK/emoji64" && sha256sum -c "$WORK/xz/raw.sha256")
    fine_data=
    if [[ -n "${FINE:-}" ]]; then
      cp "${3:?FINE needs images.csv of the data folder}" "$WORK/emoji64/images.csv"
      $PY -m train.data fine --data "$WORK/emoji64" --out "$WORK/emoji64-fine" \
        --min-images "$FINE"
      fine_data=$WORK/emoji64-fine/emoji64-fine.npz
    fi
    rm -rf "$WORK/runs"
    mkdir -p "$WORK/runs"
    settings="INIT_MODEL=${INIT_MODEL-assets/hmar-emoji64} S1=${S1:-4} S2=${S2:-2} CROPS=${CROPS:-8} GROW=${GROW:-} FINE=${FINE:-} EXTRA=${EXTRA:-}"
    echo "$settings" | tee "$WORK/runs/settings.txt"
    DATA="$WORK/emoji64/emoji64.npz" RUNS="$WORK/runs" INIT_MODEL=${INIT_MODEL-assets/hmar-emoji64} \
      STAGE1_MINUTES=${S1:-4} STAGE2_MINUTES=${S2:-2} STAGE2_CONTINUE_MASK=${CONTINUE_MASK:-1} \
      GROW=${GROW:-} FINE_DATA=$fine_data STAGE1_LR=${STAGE1_LR:-} \
      EXTRA="--set token_cache_crops=${CROPS:-8} ${EXTRA:-}" \
      setsid nohup bash scripts/train_demo_gpu.sh > "$WORK/runs/train.log" 2>&1 < /dev/null &
    sleep "${START_WAIT:-45}"
    tail -5 "$WORK/runs/train.log" ;;
  finish)
    : "${OUT:?finish writes into \$OUT}"
    log=$WORK/runs/train.log
    [[ -f "$log" ]] || { echo "no round started on this machine ($log)" >&2; exit 2; }
    start=$SECONDS
    while ! grep -q "DEMO TRAINING DONE" "$log" && (( SECONDS - start < ${WAIT:-540} )); do
      sleep 10
    done
    cp "$log" "$OUT/train.log"
    if ! grep -q "DEMO TRAINING DONE" "$log"; then
      grep -E "step|held-out" "$log" | tail -8
      echo "ROUND NOT DONE: call finish again"
      exit 0
    fi
    model=$WORK/runs/emoji64-hmar-stage2/model
    # evaluate (and return) it with the bundled model's sampler and class names: the export
    # writes the official mask schedule, the shipped sampler is in the bundled config
    $PY - "$model/config.json" assets/hmar-emoji64/config.json <<'PY'
import json
import sys

new, old = (json.load(open(path)) for path in sys.argv[1:3])
new["sampler"] = old["sampler"]
if new["transformer"]["num_classes"] == old["transformer"]["num_classes"]:
    for key in ("class_names", "class_titles", "empty_classes"):
        if key in old:
            new[key] = old[key]
json.dump(new, open(sys.argv[1], "w"), indent=1)
print("evaluated with the bundled sampler:", new["sampler"])
PY
    set +e
    label_data=
    [[ -n "${FINE:-}" ]] && label_data=$WORK/emoji64-fine/emoji64-fine.npz
    MODEL=$model DATA="$WORK/emoji64/emoji64.npz" LABEL_DATA=$label_data \
      REPORTS="$WORK/runs/reports" MASK_CFG= \
      CURVE_STEPS="${CURVE_STEPS:-0 1 2 4}" EDITS=${EDITS:-50} STRENGTHS=1 \
      bash scripts/eval_demo_gpu.sh > "$OUT/eval.log" 2>&1
    echo "evaluation exit $?"
    set -e
    cp "$WORK"/runs/reports/*.json "$OUT/" 2>/dev/null || true
    cp "$model/config.json" "$OUT/model_config.json"
    cp "$model"/transformer*.safetensors "$OUT/"
    ls -l "$OUT"
    grep -E "FD|reach|seam" "$OUT/eval.log" | tail -12 ;;
  *) echo "unknown command $cmd (stash, start, finish)" >&2; exit 2 ;;
esac
