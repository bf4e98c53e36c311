#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (no network there):
#   the CUDA test cases (tests/test_cuda.py), then the benchmarks on the GPU with TF32 off;
#   at most 6 minutes in all (the step limits below), so a 15-minute lease has room for a rerun.
# The GPU machine has no network: the spectral benchmark's peers travel as wheels in .whl/
# (git-ignored; a remote run must carry it), made here first with
#   pip download --no-deps -d .whl pyhessian hessian-eigenthings curvlinops-for-pytorch
#   bash benchmarks/gpu_check.sh            # writes logs and JSON under $OUT (default gpu-check/)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, gpytorch; print('torch', torch.__version__, 'gpytorch', gpytorch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    timeout "$limit" "$@" 2>&1 | grep -v "FutureWarning\|warnings.warn" | tee "$OUT/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
step cuda-tests 120 python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs
step operators 45 python3 benchmarks/_no_tf32.py benchmarks/bench_operators.py --device cuda --json "$OUT/operators.json"
step spectral 75 python3 benchmarks/_no_tf32.py benchmarks/bench_spectral.py --device cuda --repeats 2 --seeds 2
step blocks 60 python3 benchmarks/_no_tf32.py benchmarks/bench_blocks.py --device cuda --steps 10 --probes 2 --rounds 2
step lightning 60 python3 benchmarks/bench_lightning.py --device cuda --steps 150 --rounds 1
