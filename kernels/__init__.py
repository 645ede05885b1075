"""
The kernel switch: the model reaches attention, RMSNorm, RoPE and the loss only through these four functions.

backend is one of:
  "auto"   Triton on CUDA for shapes its kernels support, else what "sdpa" runs
  "triton" our Triton kernels; on a CPU only under TRITON_INTERPRET=1, which is how the tests run them
  "sdpa"   torch.nn.functional.scaled_dot_product_attention; norm, RoPE and the loss as autograd
           Functions of PyTorch ops with hand-written backward passes: the eager values, with a fraction of
           the allocations, which is what a CPU step spends its time on (the loss takes this path under
           "auto" and "triton" too: there is no Triton loss)
  "eager"  plain PyTorch, written for clarity: the reference the other backends are tested against

The files, each importing only those below it:
  __init__.py         this switch
  flash_attention.py  Triton: FlashAttention-2 forward and backward, split-KV decode
  rmsnorm.py          Triton: fused RMSNorm forward and backward
  rope.py             Triton: RoPE on q and k in one launch, forward and backward
  common.py           what the Triton files share (interpreter flag and fix, launcher helpers)
  torch_ops.py        "sdpa": attention_sdpa, RMSNormTorch, RoPETorch, CrossEntropy
  reference.py        "eager": attention_eager, rms_norm_eager, rope_eager, cross_entropy_eager, IGNORE_INDEX
  compile_check.py    compiles every Triton kernel for an NVIDIA GPU without one (python -m kernels.compile_check)
The references and torch ops are importable from here too (kernels.attention_eager, kernels.RMSNormTorch):
tests and benchmarks call them by those names.

The Triton modules are imported on first use, so a machine without triton (macOS, CPU-only) never
needs it. The module is called flash_attention.py, not attention.py, because a submodule named
`attention` would replace the function `kernels.attention` on the package the moment it is imported.
"""
import os

import torch

from kernels.reference import (IGNORE_INDEX, attention_eager, causal_mask, cross_entropy_eager,  # noqa: F401
                               rms_norm_eager, rope_eager)
from kernels.torch_ops import CrossEntropy, RMSNormTorch, RoPETorch, attention_sdpa

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
    if backend == "triton" or (backend == "auto" and mask is None and q.is_cuda and _triton_usable(q)):
        from kernels import flash_attention
        if backend == "triton" or flash_attention.supported(q, k, v):
            if mask is not None:
                raise ValueError("the Triton attention kernel takes no explicit mask: use backend='sdpa'")
            return flash_attention.attention(q, k, v, causal=causal)
    return attention_sdpa(q, k, v, causal, mask)


# ----------------------------------------------------------------------------- RMSNorm

def rms_norm(x, weight, eps, backend="auto"):
    """RMSNorm over the last dimension of x (any leading shape), weight of shape (x.shape[-1],)."""
    _check(backend)
    if backend == "triton" or (backend == "auto" and x.is_cuda and x.dtype in _TRITON_DTYPES and _triton_usable(x)):
        from kernels import rmsnorm
        return rmsnorm.rms_norm(x, weight, eps)
    if backend == "eager" or torch.compiler.is_compiling():
        return rms_norm_eager(x, weight, eps)
    return RMSNormTorch.apply(x, weight, eps)


# ----------------------------------------------------------------------------- RoPE

def apply_rope(q, k, cos, sin, backend="auto"):
    """Applies RoPE to q (B, T, Hq, D) and k (B, T, Hkv, D); returns (q, k)."""
    _check(backend)
    if backend == "triton" or (backend == "auto" and q.is_cuda and q.dtype in _TRITON_DTYPES and _triton_usable(q)):
        from kernels import rope
        return rope.apply_rope(q, k, cos, sin)
    if backend == "eager" or torch.compiler.is_compiling():
        return rope_eager(q, cos, sin), rope_eager(k, cos, sin)
    return RoPETorch.apply(q, cos, sin), RoPETorch.apply(k, cos, sin)


# ----------------------------------------------------------------------------- the loss

def cross_entropy(logits, targets, z_loss=0.0, backend="auto"):
    """Mean over targets != IGNORE_INDEX of -log softmax(logits)[target] + z_loss * logsumexp(logits)^2,
    in fp32 (or wider); logits (N, V), targets (N,). There is no Triton loss: "eager" and torch.compile
    take the plain formula (which inductor fuses better than it traces the Function's blocks), every
    other backend the blocked CrossEntropy."""
    _check(backend)
    if backend == "eager" or torch.compiler.is_compiling():
        return cross_entropy_eager(logits, targets, z_loss)
    return CrossEntropy.apply(logits, targets, z_loss)
