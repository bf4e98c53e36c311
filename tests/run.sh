#!/usr/bin/env bash
# Install everything the test suite needs (idempotently), then run every test:
# the Python suite (engine, widgets, magics, notebooks, browser) and the JS unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[test]"
if [ -f tests/browser/install.sh ]; then
  bash tests/browser/install.sh
fi
python -m pytest "$@"
