#!/usr/bin/env bash
# Measure a demo model on the GPU for issue 16 (what assets/MODEL_CARD.md reports):
#   MODEL=runs/emoji64-hmar-stage2/model bash scripts/eval_demo_gpu.sh
# 1. benchmarks.quality with the speed/quality curve (CURVE_STEPS, default 0 1 2 4 8; 1,020 samples each)
# 2. the same at steps 2 and 4 for each mask-step guidance ratio in MASK_CFG (to choose it)
# 3. benchmarks/editing_quality.py: inpainting seams and class edits against strength
# Reports go to $REPORTS (JSON) and the logs to stdout. CPU timing is measured elsewhere (the
# 2-core target): quality.py --timing-only --curve 0 1 2 4 8.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-runs/emoji64-hmar-stage2/model}
DATA=${DATA:-data/emoji64/emoji64.npz}
REPORTS=${REPORTS:-runs/reports}
SAMPLES=${SAMPLES:-1020}
MASK_CFG=${MASK_CFG-0 0.5}            # empty: none
STRENGTHS=${STRENGTHS:-1 2 3 4}
DEVICE=${DEVICE:-cuda}
EDITS=${EDITS:-100}                   # 0: no editing benchmark
CURVE=${CURVE:-1}                     # 0: skip step 1 (e.g. only the guidance runs)
CURVE_STEPS=${CURVE_STEPS:-0 1 2 4 8}  # the steps of the curve (at most the model's refine_max_side allows)
LABEL_DATA=${LABEL_DATA:-}            # a model with finer classes: the .npz it was trained on
PY=${PYTHON:-python3}
label_data=()
[[ -n "$LABEL_DATA" ]] && label_data=(--label-data "$LABEL_DATA")
export PYTHONUNBUFFERED=1
mkdir -p "$REPORTS"
name=$(basename "$(dirname "$MODEL")")

if [[ "$CURVE" == 1 ]]; then
  $PY -m benchmarks.quality --model "$MODEL" --data "$DATA" --device "$DEVICE" \
    --samples "$SAMPLES" --batch-size 255 --curve $CURVE_STEPS --skip-timing "${label_data[@]}" \
    --json "$REPORTS/quality_$name.json" --grid "$REPORTS/grids_$name"
fi
for ratio in $MASK_CFG; do
  $PY -m benchmarks.quality --model "$MODEL" --data "$DATA" --device "$DEVICE" \
    --samples "$SAMPLES" --batch-size 255 --refine 2 --curve 4 --skip-timing \
    --mask-cfg-ratio "$ratio" "${label_data[@]}" --json "$REPORTS/quality_${name}_maskcfg$ratio.json"
done
if [[ "$EDITS" != 0 ]]; then
  $PY -m benchmarks.editing_quality --model "$MODEL" --images "$DATA" \
    --classifier benchmarks.classifier:editing_classifier --num "$EDITS" --device "$DEVICE" \
    --class-strength $STRENGTHS "${label_data[@]}" --out "$REPORTS/editing_$name.json"
fi
echo "DEMO EVALUATION DONE: $REPORTS"
