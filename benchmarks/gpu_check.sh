#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (no network there):
#   the CUDA test cases (tests/test_cuda.py), then the benchmarks on the GPU with TF32 off;
#   about 11 minutes in all (the step limits below); STEPS="name ..." runs only those steps,
#   so a 15-minute lease can split it or rerun a part.
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

STEPS=${STEPS:-all}  # e.g. STEPS="cuda-tests scale-r18-top5": only these steps
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    [[ $STEPS == all || " $STEPS " == *" $name "* ]] || return 0
    echo "=== $name"
    timeout "$limit" "$@" 2>&1 | grep -v "FutureWarning\|warnings.warn" | tee "$OUT/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
step cuda-tests 120 python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs
# issue 18's open bar: the 80 x 4 density on ResNet-20 (512 images) at most 0.6x hessian-eigenthings
step scale-r20-density 90 python3 benchmarks/_no_tf32.py benchmarks/bench_scale.py --device cuda --model resnet20 --images 512 --only density --peers eigenthings --rounds 2 --json "$OUT/scale_resnet20_density.json"
step operators 45 python3 benchmarks/_no_tf32.py benchmarks/bench_operators.py --device cuda --json "$OUT/operators.json"
step spectral 75 python3 benchmarks/_no_tf32.py benchmarks/bench_spectral.py --device cuda --repeats 2 --seeds 2
step blocks 60 python3 benchmarks/_no_tf32.py benchmarks/bench_blocks.py --device cuda --steps 10 --probes 2 --rounds 2
step lightning 60 python3 benchmarks/bench_lightning.py --device cuda --steps 150 --rounds 1
# scale (docs/scale.md, README): ResNet-18 certified top-5 over 10k images; a 1B-parameter density
step scale-r18-top5 90 python3 benchmarks/_no_tf32.py benchmarks/bench_scale.py --device cuda --model resnet18 --images 10000 --only top5 --peers none --rounds 2 --reference-tol 1e-4 --json "$OUT/scale_resnet18_top5.json"
step scale-r18-peers 45 python3 benchmarks/_no_tf32.py benchmarks/bench_scale.py --device cuda --model resnet18 --images 1000 --rounds 1 --no-equal --json "$OUT/scale_resnet18_peers.json"
step memory-1b 100 python3 benchmarks/bench_memory.py --params 1e9 --steps 20 --device cuda --reorthogonalize none --memory-budget 60e9
