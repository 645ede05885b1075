"""
What the three Triton files (flash_attention.py, rmsnorm.py, rope.py) share: whether they run under the
CPU interpreter (and a fix that lets triton 3.6's interpreter run their loops), and small launcher helpers.
"""
import functools
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def prep(t):
    """t with unit stride along its last dimension, which every kernel assumes (copied if it has not)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def strides(prefix, t, dims):
    """t's strides under the kernels' argument names: strides("sq", q, "bht") = {sqb:, sqh:, sqt:}."""
    return {prefix + d: s for d, s in zip(dims, t.stride())}


@functools.lru_cache(maxsize=None)
def num_sms(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def allow_runtime_loop_bounds(interpreter):
    """Makes the interpreter accept a runtime scalar as a range() bound under NumPy >= 2.4.

    The interpreter holds every scalar (a kernel argument, program_id, tl.maximum of them) as a 1-element
    array, and triton 3.6 (and earlier) turns a loop bound into a Python int with int(array), which NumPy 2.4 refuses
    for arrays that are not 0-d (deprecated since NumPy 1.25). Every `for i in range(lo, hi, BLOCK)` whose
    lo or hi is not a constexpr then fails with "only 0-dimensional arrays can be converted to Python
    scalars" (triton-lang/triton issue 9171); later triton squeezes the array first (pull request 9172),
    as this does. Compiled kernels never run this code: it changes nothing on a GPU."""
    patch_tensor = interpreter._patch_lang_tensor  # installs tensor.__index__ for the length of a launch

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched


if INTERPRET:
    from triton.runtime import interpreter as _interpreter

    allow_runtime_loop_bounds(_interpreter)
