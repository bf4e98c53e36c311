"""Run a benchmark script with TF32 off: ``python benchmarks/_no_tf32.py SCRIPT [ARGS...]``.

cuDNN convolutions default to TF32 on Ampere and later GPUs (about 1e-3 relative error), which
would blur curvature products; the GPU checks run every benchmark through this wrapper.
"""

import runpy
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
