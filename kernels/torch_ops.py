"""
What "sdpa" runs: PyTorch's fused attention, and RMSNorm, RoPE, SwiGLU and the loss as autograd Functions of
PyTorch ops with hand-written backward passes. They give the eager references' values (kernels/reference.py)
with a fraction of the allocations, which is what a CPU step spends its time on.
"""
import functools

import torch
import torch.nn.functional as F

from kernels.reference import IGNORE_INDEX, _acc, causal_mask


def attention_sdpa(q, k, v, causal=True, mask=None):
    """attention_eager's semantics through F.scaled_dot_product_attention."""
    Tq, Tk = q.shape[2], k.shape[2]
    if causal and Tq == 1:  # one new query at the end sees every key
        causal = False
    elif causal and (mask is not None or Tq != Tk):
        # SDPA's is_causal aligns to the top left and cannot be combined with a mask: build ours
        cm = causal_mask(Tq, Tk, q.device)
        mask, causal = (cm if mask is None else mask & cm), False
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)


def attention_math(q, k, v, causal=True):
    """attention_eager's semantics (no explicit mask; Tq <= Tk when causal), written out for training on a CPU,
    where SDPA's flash kernel takes as long in bf16 as in fp32. A kv head's group of query heads is stacked into
    one product, so GQA copies neither k nor v; the scale and the causal mask (an additive bias of 0 and -inf)
    enter the scores' product itself (baddbmm); the softmax works in fp32 inside and rounds its probabilities to
    q's dtype once, to serve the product with v and backward (2 bytes kept per score in bf16). Causal attention
    over more than 128 queries goes in up to four blocks of queries, each against only the keys it sees (5/8 of
    the products at four blocks). Forward and backward, 8 query and 2 kv heads of 64, 2048 tokens in batches of T
    (`python -m kernels.bench ops`), with train.py's allocator setting (hold_freed_memory), against SDPA's time:
    in bf16 0.3x at T=128, 0.4x at 256 and 512, 0.6x at 1024, 0.65x at 2048; in fp32 0.9x at 128 and 256, 0.7x
    at 512, 0.9x at 1024, 1.1x at 2048. Without that setting bf16 is much the same, fp32 1.45x at 2048. Against
    float64, its output and gradients are within 1-2x SDPA's error (the scores are rounded to bf16, as in
    nanoGPT's and transformers' eager attention)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    q = q.reshape(B, Hkv, G, Tq, D)  # a view
    step = max(128, -(-Tq // 4)) if causal else Tq  # causal: blocks of queries, each against the keys it sees
    out = []
    for lo in range(0, Tq, step):
        n = min(step, Tq - lo)
        keys = Tk - Tq + lo + n if causal else Tk
        bias = causal_bias(n, keys, G, q.dtype, q.device) if causal else q.new_zeros(1, 1)
        s = torch.baddbmm(bias, q[:, :, :, lo:lo + n].reshape(B * Hkv, G * n, D),
                          k[:, :, :keys].reshape(B * Hkv, keys, D).transpose(1, 2), alpha=D ** -0.5)
        out.append((s.softmax(-1) @ v[:, :, :keys].reshape(B * Hkv, keys, D)).view(B, Hkv, G, n, D))
    return (out[0] if len(out) == 1 else torch.cat(out, dim=3)).view(B, Hq, Tq, D)


@functools.lru_cache(maxsize=16)
def causal_bias(Tq, Tk, groups, dtype, device):
    """causal_mask as scores to add, 0 where a query attends and -inf elsewhere, repeated for a group of query
    heads stacked along the queries: (groups * Tq, Tk)."""
    bias = torch.zeros(Tq, Tk, dtype=dtype, device=device).masked_fill_(~causal_mask(Tq, Tk, device), float("-inf"))
    return bias.repeat(groups, 1)


def normalize(x, weight, eps):
    """rms_norm_eager's values, and the reciprocal RMS (x.shape[:-1] + (1,), fp32 or wider). The mean of the
    squares is spelled as a sum divided in place, which is how mean computes it on a CPU, so the values are
    F.rms_norm's bit for bit there. On a CPU F.rms_norm is a composite of small ops too, a slower one: inside
    elm_tiny's decode step (25 norms of a few hundred numbers per token) it took 27 us a call, a fifth of the step."""
    xf = x.to(_acc(x.dtype))
    rstd = torch.rsqrt(xf.square().sum(-1, keepdim=True).div_(x.shape[-1]).add_(eps))
    return (xf * rstd).to(x.dtype) * weight, rstd


class RMSNormTorch(torch.autograd.Function):
    """rms_norm_eager's values with a hand-written backward, for devices without our Triton kernels.
    Autograd through the eager code allocates and traverses a full-size tensor for each of its pow, mul,
    mean and rsqrt steps and their derivatives; here the backward is PyTorch's fused LayerNorm backward
    with a zero mean, plus the one term that the mean subtraction adds: LayerNorm's
    dx = rstd * (dn - mean(dn) - n * mean(dn * n)), with n = x * rstd and dn = dy * weight, is RMSNorm's
    dx minus rstd * mean(dn)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = normalize(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

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


class SwiGLUTorch(torch.autograd.Function):
    """swiglu_eager's values with a backward that writes both halves' gradients into one tensor: autograd
    through chunk, silu and mul ends in a cat of the two, an extra pass over the widest activation of the
    layer. The same ops otherwise, so the gradients are autograd's bit for bit."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        s = F.silu(gate)
        ctx.save_for_backward(gate_up, s)
        return s * up

    @staticmethod
    def backward(ctx, dy):
        gate_up, s = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        d = torch.empty_like(gate_up)
        dgate, dup = d.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(dy * up, gate, grad_input=dgate)
        torch.mul(dy, s, out=dup)
        return d


def rotate(x, cos, sin):
    """rope_eager's values, bit for bit, with one full-size output and no cat of x."""
    xf = x.to(_acc(x.dtype))
    x1, x2 = xf.chunk(2, dim=-1)
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)
    out = xf * torch.cat([c, c], dim=-1)  # x * cos over both halves
    o1, o2 = out.chunk(2, dim=-1)  # views: updated in place, not written back through indexing (a copy)
    o1.sub_(x2 * s)
    o2.add_(x1 * s)
    return out.to(x.dtype)


class RoPETorch(torch.autograd.Function):
    """RoPE with a hand-written backward: a rotation's gradient is the rotation by the opposite angle."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return rotate(dy, cos, -sin), None, None


class CrossEntropy(torch.autograd.Function):
    """cross_entropy_eager's loss, computed in fp32 (or wider); the gradient is
    softmax * (1 + 2 z_loss lse) - onehot(target), over the number of targets.
    The (tokens, vocab) logits are the largest tensor of a small model's step, and the loss is a scalar, so its
    gradient with respect to the logits is known at forward time up to the one number backward brings. Forward
    works through the logits a block of rows at a time (a block small enough to stay in cache and for the
    allocator to reuse) and turns each block's exponentials into its gradient at once; backward only scales it.
    That is one exp and one fp32 pass over the logits where computing the softmax again in backward takes two,
    and nothing is saved but the gradient. Autograd through F.cross_entropy (plus a logsumexp for z-loss)
    keeps an fp32 copy of the logits and allocates several more. need_grad: whether to compute the gradient
    (Function.forward runs without grad mode, so the caller says).
    The gradient is stored in the logits' dtype (fp16 excepted, see below), so in bf16 it is rounded before
    backward's factor arrives: where that factor is not 1 (train.py weighs uneven micro-batches), an element
    can be one bf16 step from a single rounding. Keeping it in fp32 instead would make it twice the size of
    the logits, the largest tensor of the step."""

    @staticmethod
    def forward(ctx, logits, targets, z_loss, need_grad):  # logits (N, V), targets (N,)
        acc = _acc(logits.dtype)
        lse = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        valid = (targets != IGNORE_INDEX).to(acc)
        n = valid.sum().clamp(min=1)  # an all-ignored batch gives 0, not NaN
        w = (valid / n).unsqueeze(1)  # d loss / d (per-token loss), 0 where ignored
        tgt = targets.clamp(min=0).unsqueeze(1)
        # fp16 keeps the gradient in fp32 until backward applies the loss scale: unscaled, it underflows
        dlogits = torch.empty_like(logits, dtype=acc if logits.dtype == torch.float16 else None) if need_grad else None
        for r in CrossEntropy.blocks(logits):
            x = logits[r]
            m = x.amax(-1, keepdim=True).to(acc)
            here = need_grad and dlogits.dtype == acc  # then the block is worked on where its gradient goes
            e = torch.sub(x, m, out=dlogits[r]) if here else x - m  # in acc either way (m is)
            s = e.exp_().sum(-1, keepdim=True)
            lse[r] = (s.log() + m).squeeze(1)
            if need_grad:  # softmax = e / s, times (1 + 2 z_loss lse) w, minus w at the target
                g = e.mul_((1 + 2 * z_loss * lse[r, None]) * w[r] / s).scatter_add_(1, tgt[r], -w[r])
                if not here:
                    dlogits[r] = g
        nll = lse - logits.gather(1, tgt).squeeze(1).to(acc)
        ctx.dlogits, ctx.dtype = dlogits, logits.dtype
        return ((nll + z_loss * lse * lse) * valid).sum() / n

    @staticmethod
    def backward(ctx, grad):
        dlogits, ctx.dlogits = ctx.dlogits, None  # scaled in place, so it serves one backward
        if dlogits is None:
            raise RuntimeError("kernels.cross_entropy's gradient was made for one backward (no retain_graph), "
                               "or with grad mode off")
        return dlogits.mul_(grad).to(ctx.dtype), None, None, None

    @staticmethod
    def blocks(logits):
        """Row slices of about 4M elements (16 MB in fp32) on a CPU, 64M on a GPU (fewer kernel launches)."""
        rows = max(1, (1 << (26 if logits.is_cuda else 22)) // logits.shape[1])
        return [slice(i, i + rows) for i in range(0, logits.shape[0], rows)]
