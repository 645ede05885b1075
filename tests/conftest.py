import os
import sys

import torch

# Triton kernels run on the CPU through the interpreter; the variable must be set before triton is imported.
# Not with CUDA: there the same tests run the compiled kernels (the interpreter's bf16 tl.dot is wrong).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
