#!/usr/bin/env bash
# Install what the browser suite needs, idempotently; quick (about a second) when all is there.
#   - Debian's chromium at /usr/bin/chromium (apt-get, only if it is missing; needs root).
#     Never `playwright install`: browser downloads by test tools do not work here.
#   - JupyterLab 4 and the Python playwright driver (pip, only if missing).
# Exit status: 0 when everything is present afterwards; 0 with a warning when chromium cannot be
# installed on this machine (not root, no apt-get): the browser tests then skip, naming why;
# non-zero when an install that should work fails (CI must see that).
set -euo pipefail

PYTHON="${PYTHON:-python}"
CHROMIUM="${JC_CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/browser/install.sh: installing Debian's chromium (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "tests/browser/install.sh: WARNING: $CHROMIUM is missing and cannot be installed here" \
         "(needs root and apt-get); the browser tests will be skipped" >&2
  fi
fi

if ! "$PYTHON" - <<'PY' 2>/dev/null
import sys
from importlib.metadata import version

def major_minor(name):
    return tuple(int(p) for p in version(name).split(".")[:2])

lab = major_minor("jupyterlab")
sys.exit(0 if (4, 4) <= lab < (5, 0) and major_minor("playwright") >= (1, 40) else 1)
PY
then
  echo "tests/browser/install.sh: installing jupyterlab and playwright (pip)"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "jupyterlab>=4.4,<5" "playwright>=1.40"
fi
