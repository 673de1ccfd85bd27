#!/usr/bin/env bash
# Install Debian's chromium for the browser test (tests/app/test_browser.py), which drives it
# through the `playwright` Python package (executable_path=/usr/bin/chromium; no browser download).
# Idempotent and quiet: does nothing when chromium is already there. Needs root (or sudo).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: need root (or sudo) to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-browser: apt-get install chromium failed" >&2
    exit 1
fi
echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)"
