#!/usr/bin/env bash
# Install everything the test suite needs (idempotently), then run every test:
# the Python suite (engine, widgets, magics, notebooks, browser) and the JS unit tests,
# then the numeric tests again under the CPU kernels that other machines use.
#
# Arguments go to pytest (e.g. `bash tests/run.sh tests/test_optim.py -q`); they select the
# tests of both rounds. JC_KERNELS="" skips the second round.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[test]"
if [ -f tests/browser/install.sh ]; then
  bash tests/browser/install.sh
fi
python -m pytest "$@"

# Round two. ATen picks its CPU kernels (default, AVX2, AVX-512) from what the CPU has, and
# each rounds differently; so does a reduction split over another number of threads. A test
# whose threshold sits within that spread passes on one machine and fails on the next, so the
# numeric tests run again under every kernel this CPU can run other than its own, with two
# threads. The browser, notebook, JS and packaging tests compute nothing kernel-dependent.
native="$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())')"
rank() { case "$1" in default) echo 0 ;; avx2) echo 1 ;; avx512) echo 2 ;; *) echo -1 ;; esac; }
for kernel in ${JC_KERNELS-default avx2}; do
  if [ "$kernel" = "$native" ]; then
    echo "tests/run.sh: $kernel kernels are this CPU's own: round one ran them"
    continue
  fi
  if [ "$(rank "$kernel")" -gt "$(rank "$native")" ]; then
    echo "tests/run.sh: this CPU ($native) cannot run $kernel kernels: skipped"
    continue
  fi
  echo "+ ATEN_CPU_CAPABILITY=$kernel JC_TEST_THREADS=2 python -m pytest (numeric tests)"
  ATEN_CPU_CAPABILITY="$kernel" JC_TEST_THREADS=2 python -m pytest -q -p no:cacheprovider \
    -m "not browser" --ignore=tests/browser --ignore=tests/test_js.py \
    --ignore=tests/test_notebooks.py --ignore=tests/test_notebook_magics.py \
    --ignore=tests/test_readme.py --ignore=tests/test_package.py --ignore=tests/test_layers.py \
    --ignore=tests/test_notebook_static.py "$@"
done
