#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md and the model card in one run (one H200: ~10 minutes).
#   bash scripts/gpu_benchmarks.sh OUT_DIR [steps...]
# steps (default all, in this order): quality attention inference train kernels-tests;
# also cfg-sweep (class accuracy of the bundled model against cfg; no dataset needed) and
# app-roundtrip (Gradio's overhead on the GPU; GRADIO_PACK, see scripts/pack_gradio_for_gpu.sh)
# Needs data/emoji64/emoji64.npz for `quality` (python -m train.data emoji --out data/emoji64
# --npz). Each step logs to OUT_DIR/<step>.log and writes its JSON there; a failing step is
# reported and the next one runs. Render the Markdown afterwards, off the GPU:
#   python -m benchmarks.attention --render OUT/att.json --markdown BENCHMARKS.md
#   python -m benchmarks.inference --render OUT/inf/inference.json --markdown BENCHMARKS.md
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_benchmarks.sh OUT_DIR [steps...]}
shift
STEPS=${*:-quality attention inference train kernels-tests}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  >> "$OUT/gpu.txt"
step() {
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: $*" | tee -a "$OUT/steps.txt"
  "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
}
for s in $STEPS; do
  case $s in
    quality) step quality python -m benchmarks.quality \
        --model assets/hmar-emoji64 --classifier benchmarks/models/emoji-classifier \
        --data data/emoji64/emoji64.npz --samples 1020 --device cuda --skip-timing \
        --grid "$OUT/grids" --json "$OUT/quality.json" --markdown ;;
    attention) step attention python -m benchmarks.attention --with-1024-causal --breakdown \
        --json "$OUT/att.json" ;;
    inference) step inference python -m benchmarks.inference --out "$OUT/inf" ;;
    train) step train python -m benchmarks.train_step --steps 10 --warmup 3 \
        --json "$OUT/train.json" ${TRAIN_ARGS:-} ;;
    kernels-tests) step kernels-tests python -m pytest -q -m gpu tests/kernels ;;
    cfg-sweep) step cfg-sweep python -m benchmarks.cfg_sweep \
        --cfg ${SWEEP_CFG:-2 3 4 5 6 8} --samples 1020 --device cuda \
        --real-balanced "${REAL_BALANCED:-0.5514}" --json "$OUT/cfg.json" ${SWEEP_ARGS:-} ;;
    app-roundtrip) # the served app's inpaint (gradio_client -> Gradio -> engine) against the
      # direct call, 256 px d16; needs Gradio there: GRADIO_PACK=<folder of
      # scripts/pack_gradio_for_gpu.sh>, installed into /tmp/site first
      if [[ -n "${GRADIO_PACK:-}" ]]; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/site "$GRADIO_PACK"/*.whl \
          && tar xzf "$GRADIO_PACK/gradio-stripped.tgz" -C /tmp/site
      fi
      PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} step app-roundtrip python -m \
        benchmarks.app_roundtrip --device cuda --random-depth 16 --out "$OUT/roundtrip.json" ;;
    *) echo "unknown step $s" | tee -a "$OUT/steps.txt" ;;
  esac
done
echo "== all done" | tee -a "$OUT/steps.txt"
