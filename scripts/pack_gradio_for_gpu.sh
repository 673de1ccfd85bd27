#!/usr/bin/env bash
# Gradio for the GPU machine, whose image has no Gradio and whose calls carry at most 64 MiB
# with the tracked tree (~48 MB): the wheels of Gradio's dependencies that the image lacks
# (the versions installed here, for its CPython 3.12 on x86-64) and Gradio itself without its
# web front end, node server and demo media (6 MB instead of 80: gradio_client talks to the API
# routes, which need none of them). About 7 MB in all.
#   bash scripts/pack_gradio_for_gpu.sh gpujob/gradio     # OUT must be git-ignored
# There, before `python -m benchmarks.app_roundtrip --device cuda --random-depth 16`:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site OUT/*.whl &&
#   tar xzf OUT/gradio-stripped.tgz -C /tmp/site && export PYTHONPATH=/tmp/site:$PYTHONPATH
# (what the image lacks: ../.library/device/KINDS.md, "Python packages already there").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: pack_gradio_for_gpu.sh OUT_FOLDER}
MISSING="annotated-types brotli fastapi gradio-client groovy hf-gradio opentelemetry-api orjson
pydantic pydantic-core pydub python-multipart pytz safehttpx semantic-version starlette tomlkit
typing-inspection uvicorn"
mkdir -p "$OUT"
rm -f "$OUT"/*.whl "$OUT"/gradio-stripped.tgz
version() { python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64)
for name in $MISSING; do
  # a binary wheel built for this machine's Python may not exist for 3.12 at the same
  # version (orjson): then the newest release that has one
  python -m pip download -q --no-deps "${platform[@]}" -d "$OUT" "$name==$(version "$name")" \
    2>/dev/null || python -m pip download -q --no-deps "${platform[@]}" -d "$OUT" "$name"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m pip download -q --no-deps -d "$tmp" "gradio==$(version gradio)"
(cd "$tmp" && unzip -q gradio-*.whl && rm -rf gradio/templates/node gradio/media_assets \
  gradio/templates/frontend/assets/* gradio/templates/frontend/static/* gradio-*.dist-info/RECORD \
  && tar czf gradio-stripped.tgz gradio gradio-*.dist-info)
mv "$tmp/gradio-stripped.tgz" "$OUT/"
du -sh "$OUT"
