"""
What the three Triton files (flash_attention.py, rmsnorm.py, rope.py) share: whether they run under the
CPU interpreter, and a fix that lets the interpreter of triton <= 3.6 run their loops.
"""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def allow_runtime_loop_bounds(interpreter):
    """Makes the interpreter accept a runtime scalar as a range() bound under NumPy >= 2.4.

    The interpreter holds every scalar (a kernel argument, program_id, tl.maximum of them) as a 1-element
    array, and triton <= 3.6 turns a loop bound into a Python int with int(array), which NumPy 2.4 refuses
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
