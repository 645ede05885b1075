"""
What "sdpa" runs: PyTorch's fused attention, and RMSNorm, RoPE and the loss as autograd Functions of PyTorch
ops with hand-written backward passes. They give the eager references' values (kernels/reference.py) with a
fraction of the allocations, which is what a CPU step spends its time on.
"""
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
    The (tokens, vocab) logits are the largest tensor of a small model's step. Autograd through
    F.cross_entropy (plus a logsumexp for z-loss) keeps an fp32 copy of it for backward and allocates
    several more, and on a CPU a fresh allocation that size costs more than the math (every page faults
    in). Here only the logits and one logsumexp per token are kept, and both passes work through them a
    block of rows at a time, in an fp32 buffer small enough for the allocator to reuse."""

    @staticmethod
    def forward(ctx, logits, targets, z_loss):  # logits (N, V), targets (N,)
        acc = _acc(logits.dtype)
        lse = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        for r in CrossEntropy.blocks(logits):
            x = logits[r].to(acc, copy=True)
            m = x.amax(-1, keepdim=True)
            lse[r] = x.sub_(m).exp_().sum(-1).log_() + m.squeeze(1)
        valid = (targets != IGNORE_INDEX).to(acc)
        n = valid.sum().clamp(min=1)  # an all-ignored batch gives 0, not NaN
        tgt = targets.clamp(min=0).unsqueeze(1)
        nll = lse - logits.gather(1, tgt).squeeze(1).to(acc)
        loss = ((nll + z_loss * lse * lse) * valid).sum() / n
        ctx.save_for_backward(logits, tgt, valid * (1 / n), lse)
        ctx.z_loss = z_loss
        return loss

    @staticmethod
    def backward(ctx, grad):
        logits, tgt, weight, lse = ctx.saved_tensors
        w = (grad * weight).unsqueeze(1)  # d loss / d (per-token loss), 0 where ignored
        scale = (1 + 2 * ctx.z_loss * lse).unsqueeze(1) * w
        dlogits = torch.empty_like(logits)
        for r in CrossEntropy.blocks(logits):
            p = logits[r].to(lse.dtype, copy=True).sub_(lse[r, None]).exp_()  # softmax
            dlogits[r] = p.mul_(scale[r]).scatter_add_(1, tgt[r], -w[r])
        return dlogits, None, None

    @staticmethod
    def blocks(logits):
        """Row slices of about 4M elements (16 MB in fp32) on a CPU, 64M on a GPU (fewer kernel launches)."""
        rows = max(1, (1 << (26 if logits.is_cuda else 22)) // logits.shape[1])
        return [slice(i, i + rows) for i in range(0, logits.shape[0], rows)]
