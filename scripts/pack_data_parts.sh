#!/usr/bin/env bash
# Pack the demo dataset for the GPU machine, whose calls carry at most 64 MiB with the tracked
# tree (~48 MB): emoji64.npz is rewritten uncompressed (arrays unchanged) and xz-compressed
# (25 MB, zlib's npz is 36.6 MB), then split into parts of 12.6 MB, one per call, sent in
# back-to-back calls on one warm machine (it keeps /tmp between them) and joined there:
#   bash scripts/pack_data_parts.sh gpujob/xz     # OUT must be git-ignored (.git/info/exclude)
#   there: cat part_* | xz -d > /tmp/data/emoji64.npz, then compare with raw.sha256
# (what session 6 did: docs/gpu-logs/2026-12-07-demo-session6/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: pack_data_parts.sh OUT_FOLDER}
DATA=${DATA:-data/emoji64/emoji64.npz}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -c "import numpy as np, sys; d = np.load(sys.argv[1]); np.savez(sys.argv[2], **{k: d[k] for k in d.files})" \
  "$DATA" "$tmp/emoji64.npz"
mkdir -p "$OUT"
rm -f "$OUT"/part_*
(cd "$tmp" && sha256sum emoji64.npz) > "$OUT/raw.sha256"
xz -9e -T2 -c "$tmp/emoji64.npz" | split -b 12600000 - "$OUT/part_"
ls -l "$OUT"
