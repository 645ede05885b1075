"""
The kernel switch: the model reaches attention, RMSNorm and RoPE only through these three functions.

backend is one of:
  "auto"   Triton on CUDA for shapes its kernels support, else what "sdpa" runs
  "triton" our Triton kernels (kernels/flash_attention.py, rmsnorm.py, rope.py); on a CPU only under
           TRITON_INTERPRET=1, which is how the tests run them
  "sdpa"   torch.nn.functional.scaled_dot_product_attention; norm and RoPE as autograd Functions of
           PyTorch ops with hand-written backward passes (RMSNormTorch, RoPETorch): the eager values, with
           a fraction of the allocations, which is what a CPU step spends its time on
  "eager"  plain PyTorch, written for clarity: the reference the other backends are tested against

The Triton modules are imported on first use, so a machine without triton (macOS, CPU-only) never
needs it. The module is called flash_attention.py, not attention.py, because a submodule named
`attention` would replace the function `kernels.attention` on the package the moment it is imported.
"""
import math
import os

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "triton", "sdpa", "eager")
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what "auto" sends to the norm/RoPE kernels


def _acc(dtype):
    """Dtype of the eager math: fp32 for fp16/bf16/fp32 inputs; float64 stays float64, so tests can
    compute the references of the other backends in float64."""
    return torch.promote_types(dtype, torch.float32)


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

def causal_mask(Tq, Tk, device):
    """Bool mask (Tq, Tk), True = attend. Aligned to the bottom right: query i sits at key position
    Tk - Tq + i, which is what a chunk of new queries against a longer KV cache needs (SDPA's
    is_causal aligns to the top left instead)."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def attention_eager(q, k, v, causal=True, mask=None):
    """Reference attention. q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D); mask is bool, True = attend,
    broadcastable to (B, Hq, Tq, Tk). Scores and softmax in fp32; fully masked rows give zeros."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, Tk, D): query head h reads kv head h // group
    v = v.repeat_interleave(group, dim=1)
    acc = _acc(q.dtype)
    att = (q.to(acc) @ k.to(acc).transpose(-2, -1)) / math.sqrt(D)  # (B, Hq, Tq, Tk)
    if causal:
        mask = causal_mask(Tq, Tk, q.device) if mask is None else mask & causal_mask(Tq, Tk, q.device)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att, dim=-1).nan_to_num(0.0)  # a row with no visible key is all -inf -> NaN -> 0
    return (att @ v.to(acc)).to(q.dtype)


def attention_sdpa(q, k, v, causal=True, mask=None):
    Tq, Tk = q.shape[2], k.shape[2]
    if causal and Tq == 1:  # one new query at the end sees every key
        causal = False
    elif causal and (mask is not None or Tq != Tk):
        # SDPA's is_causal aligns to the top left and cannot be combined with a mask: build ours
        cm = causal_mask(Tq, Tk, q.device)
        mask, causal = (cm if mask is None else mask & cm), False
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)


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

def rms_norm_eager(x, weight, eps):
    """Normalize in fp32, cast back to x's dtype, then scale: the cast order of CoreNet and HF Llama
    (spec section 5, trap 7); scaling in fp32 first gives small bf16 differences."""
    # F.rms_norm without a weight is one fused op for the normalisation (bit-identical to the spelled-out
    # x * rsqrt(mean(x^2) + eps)); the weight comes after the cast, which the fused op cannot do
    return F.rms_norm(x.to(_acc(x.dtype)), (x.shape[-1],), eps=eps).to(x.dtype) * weight


class RMSNormTorch(torch.autograd.Function):
    """rms_norm_eager's values with a hand-written backward, for devices without our Triton kernels.
    Autograd through the eager code allocates and traverses a full-size tensor for each of its pow, mul,
    mean and rsqrt steps and their derivatives; here the backward is PyTorch's fused LayerNorm backward
    with a zero mean, plus the one term that the mean subtraction adds: LayerNorm's
    dx = rstd * (dn - mean(dn) - n * mean(dn * n)), with n = x * rstd and dn = dy * weight, is RMSNorm's
    dx minus rstd * mean(dn)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.to(_acc(x.dtype))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # bit-identical to F.rms_norm's
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        acc, C = rstd.dtype, x.shape[-1]
        with torch.autocast(dy.device.type, enabled=False):  # in case backward() runs under autocast
            dy, w = dy.to(acc), weight.to(acc)
            dx, dw, _ = torch.ops.aten.native_layer_norm_backward(
                dy, x.to(acc), [C], torch.zeros_like(rstd), rstd, w, None, [True, ctx.needs_input_grad[1], False])
            dx += rstd * torch.mv(dy.reshape(-1, C), w).view(rstd.shape) / C  # + rstd * mean(dn)
        return dx.to(x.dtype), None if dw is None else dw.to(weight.dtype), None


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

def rope_eager(x, cos, sin):
    """Rotate-half RoPE (the Hugging Face layout): pairs (x[i], x[i + D/2]) rotate by angle pos * theta_i.
    x (B, T, H, D); cos, sin (B or 1, T, D/2) fp32. Math in fp32, result in x's dtype."""
    d = x.shape[-1] // 2
    xf = x.to(_acc(x.dtype))
    x1, x2 = xf[..., :d], xf[..., d:]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, D/2): broadcast over heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def _rotate(x, cos, sin):
    """rope_eager's values, bit for bit, with one full-size output and no cat."""
    d = x.shape[-1] // 2
    xf = x.to(_acc(x.dtype))
    s = sin.unsqueeze(2)
    out = xf * torch.cat([cos, cos], dim=-1).unsqueeze(2)  # x * cos over both halves
    out[..., :d] -= xf[..., d:] * s
    out[..., d:] += xf[..., :d] * s
    return out.to(x.dtype)


class RoPETorch(torch.autograd.Function):
    """RoPE with a hand-written backward: a rotation's gradient is the rotation by the opposite angle."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rotate(dy, cos, -sin), None, None


def apply_rope(q, k, cos, sin, backend="auto"):
    """Applies RoPE to q (B, T, Hq, D) and k (B, T, Hkv, D); returns (q, k)."""
    _check(backend)
    if backend == "triton" or (backend == "auto" and q.is_cuda and q.dtype in _TRITON_DTYPES and _triton_usable(q)):
        from kernels import rope
        return rope.apply_rope(q, k, cos, sin)
    if backend == "eager" or torch.compiler.is_compiling():
        return rope_eager(q, cos, sin), rope_eager(k, cos, sin)
    return RoPETorch.apply(q, cos, sin), RoPETorch.apply(k, cos, sin)
