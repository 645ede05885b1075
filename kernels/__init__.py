"""
The kernel switch: the model reaches attention, RMSNorm, RoPE, SwiGLU and the loss only through these five functions.

backend is one of:
  "auto"   Triton on CUDA for shapes its kernels support, else what "sdpa" runs; each Triton kernel only
           after it has matched the reference on a small problem, once per process and dtype (_triton_ok):
           one that does not, or raises, gets one warning line and "sdpa"'s path from then on. Training on a
           CPU, attention in bf16 (where the CPU multiplies it natively) or in fp32 over at most 1024 keys,
           of at most 2^25 scores, runs attention_math (written-out products and softmax), faster there
           than SDPA's flash kernel (_math_dtype)
  "triton" our Triton kernels; on a CPU only under TRITON_INTERPRET=1, which is how the tests run them
  "sdpa"   torch.nn.functional.scaled_dot_product_attention; norm, RoPE and the loss as autograd
           Functions of PyTorch ops with hand-written backward passes: the eager values, with a fraction of
           the allocations, which is what a CPU step spends its time on (SwiGLU and the loss take this path
           under "auto" and "triton" too: there is no Triton SwiGLU or loss)
  "eager"  plain PyTorch, written for clarity: the reference the other backends are tested against

The files, each importing only those below it:
  __init__.py         this switch
  flash_attention.py  Triton: FlashAttention-2 forward and backward, split-KV decode
  rmsnorm.py          Triton: fused RMSNorm forward and backward
  rope.py             Triton: RoPE on q and k in one launch, forward and backward
  common.py           what the Triton files share (interpreter flag and fix, launcher helpers)
  torch_ops.py        "sdpa": attention_sdpa, RMSNormTorch, RoPETorch, SwiGLUTorch, CrossEntropy; attention_math
  reference.py        "eager": attention_eager, rms_norm_eager, rope_eager, swiglu_eager, cross_entropy_eager;
                      IGNORE_INDEX
  compile_check.py    compiles every Triton kernel for an NVIDIA GPU without one (python -m kernels.compile_check)
The references and torch ops are importable from here too (kernels.attention_eager, kernels.RMSNormTorch):
tests and benchmarks call them by those names.

The Triton modules are imported on first use, so a machine without triton (macOS, CPU-only) never
needs it. The module is called flash_attention.py, not attention.py, because a submodule named
`attention` would replace the function `kernels.attention` on the package the moment it is imported.
"""
import os
import sys

import torch

from kernels.reference import (IGNORE_INDEX, attention_eager, cross_entropy_eager, rel_err, rms_norm_eager,  # noqa: F401
                               rope_eager, swiglu_eager)
from kernels.torch_ops import (CrossEntropy, RMSNormTorch, RoPETorch, SwiGLUTorch, attention_math, attention_sdpa,  # noqa: F401
                               normalize, rotate)

BACKENDS = ("auto", "triton", "sdpa", "eager")
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what "auto" sends to the norm/RoPE kernels


def _check(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _triton_usable(*tensors):
    """True when the Triton kernels can run on these tensors (CUDA, or the CPU interpreter)."""
    if not all(t.is_cuda for t in tensors) and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- "auto" checks Triton first

def _on_gpu(t):
    """Where "auto" considers the Triton kernels: CUDA tensors. (Tests let in the CPU interpreter's.)"""
    return t.is_cuda


_checked = {}  # (op, dtype) -> whether "auto" may run op's Triton kernel on dtype; decided once per process
_CHECK_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 8e-2}  # 2.5-4x tests/test_kernels.py's


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing and keeps the answer as a constant
def _triton_ok(op, dtype, device, problem):
    """Whether "auto" may run op's Triton kernel on dtype. The first time for each (op, dtype) in a process,
    the kernel runs a small random problem shaped by `problem` beside the reference (_self_check); if it errs
    by more than _CHECK_TOL, or raises, one warning line goes to stderr and the answer is no for good.
    A broken triton, driver or GPU then costs speed, not a silently wrong model."""
    key = (op, dtype)
    if key not in _checked:
        try:
            err = _self_check(op, dtype, device, problem)
            failure = None if err <= _CHECK_TOL[dtype] else f"is off by {err:.2g} x max(1, max |reference|)"
        except Exception as e:  # noqa: BLE001  (whatever the kernel raises, "auto" must not use it)
            failure = f"raised {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        if failure:
            name = str(dtype).removeprefix("torch.")
            print(f"warning: kernels: the Triton {op} kernel {failure} on a small {name} problem; backend 'auto' "
                  f"runs the non-Triton {op} for {name} from now on ('triton' still forces the kernel)",
                  file=sys.stderr)
        _checked[key] = failure is None
    return _checked[key]


def _self_check(op, dtype, device, problem):
    """op's Triton kernel against its reference in float64 on a small random problem, forward and backward:
    the largest error over the outputs and input gradients, each relative to max(1, the reference's largest
    magnitude) as in tests/test_kernels.py. problem is (head_dim, query heads per kv head) for attention,
    (width, weight dtype) for rms_norm, (head_dim,) for rope: the caller's, and the sizes are multiples of
    16 like a model's, so on a GPU the kernels compiled for the check are mostly those the call needs anyway
    (attention's autotuner still times its configs once for the check's sequence length). Its own
    generator: the global RNG, and so training, is left as it was."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, dt=dtype, scale=1.0, shift=0.0):  # rounded to the checked dtype, for both runs
        return (shift + scale * torch.randn(shape, generator=gen, device=device)).to(dt)

    if op == "attention":
        from kernels import flash_attention as fa
        D, group = problem
        ins = [(rand(1, group, 80, D), True), (rand(1, 1, 80, D), True), (rand(1, 1, 80, D), True)]  # 80: ragged blocks

        def kernel(q, k, v):  # and the split-KV decode path, forward only
            return [fa.attention(q, k, v), fa.decode(q[:, :, -1:].detach(), k.detach(), v.detach(), 2)]

        def reference(q, k, v):
            return [attention_eager(q, k, v), attention_eager(q[:, :, -1:].detach(), k.detach(), v.detach())]
    elif op == "rms_norm":
        from kernels import rmsnorm
        D, wdtype = problem
        ins = [(rand(80, D, scale=3.0), True), (rand(D, dt=wdtype, scale=0.5, shift=1.0), True)]

        def kernel(x, w):
            return [rmsnorm.rms_norm(x, w, 1e-6)]

        def reference(x, w):
            return [rms_norm_eager(x, w, 1e-6)]
    else:
        from kernels import rope
        (D,) = problem
        angle = 10 * torch.randn(1, 16, D // 2, generator=gen, device=device)
        ins = [(rand(2, 16, 4, D), True), (rand(2, 16, 2, D), True), (angle.cos(), False), (angle.sin(), False)]
        kernel = rope.apply_rope

        def reference(q, k, cos, sin):
            return [rope_eager(q, cos, sin), rope_eager(k, cos, sin)]

    def run(fn, cast):  # outputs, then the gradients of the inputs that take one, for the same cotangents
        cot = torch.Generator(device=device).manual_seed(1)
        leaves = [cast(t).requires_grad_(grad) for t, grad in ins]
        ys = list(fn(*leaves))
        diff = [y for y in ys if y.requires_grad]
        dys = [torch.randn(y.shape, generator=cot, device=device).to(dtype).to(y.dtype) for y in diff]
        return ys + list(torch.autograd.grad(diff, [t for t in leaves if t.requires_grad], dys))

    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        got, want = run(kernel, lambda t: t.clone()), run(reference, lambda t: t.double())
    return max(rel_err(a, b) for a, b in zip(got, want))


# ----------------------------------------------------------------------------- attention

def attention(q, k, v, causal=True, mask=None, backend="auto"):
    """softmax(q k^T / sqrt(D)) v with grouped-query attention.

    q (B, Hq, Tq, D); k, v (B, Hkv, Tk, D) with Hq a multiple of Hkv (query head h uses kv head
    h // (Hq // Hkv)). causal: bottom-right aligned when Tq < Tk. mask: optional bool tensor
    broadcastable to (B, Hq, Tq, Tk), True = attend (used with a static KV cache and left padding).
    Returns (B, Hq, Tq, D) in q's dtype.
    """
    _check(backend)
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if backend == "eager":
        return attention_eager(q, k, v, causal, mask)
    if backend == "triton" or (backend == "auto" and mask is None and _on_gpu(q) and _triton_usable(q)):
        from kernels import flash_attention
        if backend == "triton":
            if mask is not None:
                raise ValueError("the Triton attention kernel takes no explicit mask: use backend='sdpa'")
            return flash_attention.attention(q, k, v, causal=causal)
        dtype = flash_attention._autocast_dtype(q) or q.dtype
        if flash_attention.supported(q, k, v) and _triton_ok("attention", dtype, q.device,
                                                             (q.shape[-1], q.shape[1] // k.shape[1])):
            return flash_attention.attention(q, k, v, causal=causal)
    if backend == "auto" and mask is None and (dtype := _math_dtype(q, k, v, causal)):
        return attention_math(*(t.to(dtype) for t in (q, k, v)), causal)  # cast as autocast casts SDPA's inputs
    return attention_sdpa(q, k, v, causal, mask)


MATH_MAX_SCORES = 1 << 25  # attention_math keeps its scores for backward: 64 MB a call in bf16 at most
MATH_MAX_KEYS_FP32 = 1024  # in fp32 it pays up to about here (kernels/torch_ops.py)


def _math_dtype(q, k, v, causal):
    """The dtype "auto" runs attention_math in, or None for SDPA: training (a gradient wanted) on a CPU, bf16
    attention (the inputs', or CPU autocast's for fp32 inputs) where the CPU multiplies bf16 natively, or fp32
    over at most MATH_MAX_KEYS_FP32 keys; at most MATH_MAX_SCORES scores (batch x query heads x queries x keys)
    and at least one query, each with a key (Tq <= Tk when causal); not under torch.compile, which gets SDPA to
    lower as it does on every device. Without gradients SDPA is as fast or faster (forward alone, batch 1:
    1.0-1.5x at 64-256 tokens, 5x for a decode step's query)."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    if (not torch.is_grad_enabled() or q.device.type != "cpu" or not 0 < B * H * Tq * Tk <= MATH_MAX_SCORES
            or Tq > Tk and causal or not any(t.requires_grad for t in (q, k, v)) or torch.compiler.is_compiling()):
        return None  # a decode step ends at the first check
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") and q.dtype == torch.float32 else q.dtype
    if dtype == torch.bfloat16 and fast_cpu_bf16() or dtype == torch.float32 and Tk <= MATH_MAX_KEYS_FP32:
        return dtype
    return None


def fast_cpu_bf16():
    """Whether this CPU multiplies bf16 matrices natively (oneDNN with AVX512 or AMX); without, they are emulated."""
    return getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)()


# ----------------------------------------------------------------------------- RMSNorm

def rms_norm(x, weight, eps, backend="auto"):
    """RMSNorm over the last dimension of x (any leading shape), weight of shape (x.shape[-1],)."""
    _check(backend)
    if backend == "triton" or (backend == "auto" and _on_gpu(x) and x.dtype in _TRITON_DTYPES and _triton_usable(x)
                               and _triton_ok("rms_norm", x.dtype, x.device, (x.shape[-1], weight.dtype))):
        from kernels import rmsnorm
        return rmsnorm.rms_norm(x, weight, eps)
    if backend == "eager" or torch.compiler.is_compiling() or not torch.is_grad_enabled() and x.device.type != "cpu":
        return rms_norm_eager(x, weight, eps)  # F.rms_norm: one fused kernel on a GPU
    if not torch.is_grad_enabled():
        return normalize(x, weight, eps)[0]  # the Function's forward, without the autograd bookkeeping
    return RMSNormTorch.apply(x, weight, eps)


# ----------------------------------------------------------------------------- RoPE

def apply_rope(q, k, cos, sin, backend="auto"):
    """Applies RoPE to q (B, T, Hq, D) and k (B, T, Hkv, D); returns (q, k)."""
    _check(backend)
    if backend == "triton" or (backend == "auto" and _on_gpu(q) and q.dtype in _TRITON_DTYPES and _triton_usable(q)
                               and _triton_ok("rope", q.dtype, q.device, (q.shape[-1],))):
        from kernels import rope
        return rope.apply_rope(q, k, cos, sin)
    if backend == "eager" or torch.compiler.is_compiling():
        return rope_eager(q, cos, sin), rope_eager(k, cos, sin)
    if not torch.is_grad_enabled():  # the Function's forward without the autograd bookkeeping, q and k rotated
        qk = rotate(torch.cat([q, k], dim=2), cos, sin)  # as one tensor: half the small ops of a decode step's RoPE
        return qk.split([q.shape[2], k.shape[2]], dim=2)
    return RoPETorch.apply(q, cos, sin), RoPETorch.apply(k, cos, sin)


# ----------------------------------------------------------------------------- SwiGLU

def swiglu(gate_up, backend="auto"):
    """silu(gate) * up for gate_up = [gate | up] on the last dimension. There is no Triton SwiGLU: "eager",
    torch.compile (which fuses the formula itself) and no-grad calls take the formula, every other backend
    SwiGLUTorch."""
    _check(backend)
    if backend == "eager" or torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return swiglu_eager(gate_up)
    return SwiGLUTorch.apply(gate_up)


# ----------------------------------------------------------------------------- the loss

def cross_entropy(logits, targets, z_loss=0.0, backend="auto"):
    """Mean over targets != IGNORE_INDEX of -log softmax(logits)[target] + z_loss * logsumexp(logits)^2,
    in fp32 (or wider); logits (N, V), targets (N,). There is no Triton loss: "eager" and torch.compile
    take the plain formula (which inductor fuses better than it traces the Function's blocks), every
    other backend the blocked CrossEntropy."""
    _check(backend)
    if backend == "eager" or torch.compiler.is_compiling():
        return cross_entropy_eager(logits, targets, z_loss)
    return CrossEntropy.apply(logits, targets, z_loss, torch.is_grad_enabled() and logits.requires_grad)
