#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
# The browser test drives Debian's chromium (no browser download); install it when we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash .ci/install-browser.sh || echo "warning: chromium not installed; browser tests will skip"
fi
export GRADIO_ANALYTICS_ENABLED=False
python -m pytest -q -p no:cacheprovider "$@"
