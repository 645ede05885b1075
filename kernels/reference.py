"""
The plain-PyTorch references: what "eager" runs, and the semantics every other backend is tested against.
Written for clarity; each works in float64 too, so tests can evaluate it there.
"""
import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1  # targets that add nothing to the loss (padding, masked prompts); CoreNet's default too


def _acc(dtype):
    """Dtype of the eager math: fp32 for fp16/bf16/fp32 inputs; float64 stays float64, so tests can
    compute the references of the other backends in float64."""
    return torch.promote_types(dtype, torch.float32)


def rel_err(got, want):
    """The error measure of every kernel check: max |got - want| relative to max(1, max |want|), in float64
    (0 for empty tensors)."""
    if not want.numel():
        return 0.0
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1)).item()


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


def rms_norm_eager(x, weight, eps):
    """Normalize in fp32, cast back to x's dtype, then scale: the order of CoreNet's RMSNorm.forward
    (corenet/modeling/layers/normalization/rms_norm.py: `self._norm(x.float()).type_as(x) * self.weight`)
    and HF's LlamaRMSNorm.forward (`self.weight * hidden_states.to(input_dtype)`); scaling in fp32 first
    gives small bf16 differences."""
    # F.rms_norm without a weight is one fused op for the normalisation (bit-identical to the spelled-out
    # x * rsqrt(mean(x^2) + eps)); the weight comes after the cast, which the fused op cannot do
    return F.rms_norm(x.to(_acc(x.dtype)), (x.shape[-1],), eps=eps).to(x.dtype) * weight


def rope_eager(x, cos, sin):
    """Rotate-half RoPE (the Hugging Face layout): pairs (x[i], x[i + D/2]) rotate by angle pos * theta_i.
    x (B, T, H, D); cos, sin (B or 1, T, D/2) fp32. Math in fp32, result in x's dtype, as CoreNet's
    RotaryEmbedding.forward (corenet/modeling/layers/rotary_embeddings.py) rotates query.float() and
    key.float() and casts back with type_as."""
    d = x.shape[-1] // 2
    xf = x.to(_acc(x.dtype))
    x1, x2 = xf[..., :d], xf[..., d:]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, D/2): broadcast over heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def swiglu_eager(gate_up):
    """SwiGLU on the fused projection's output [gate | up] (last dimension): silu(gate) * up, as CoreNet's
    FeedForwardNetwork.forward (silu of the first half) and LlamaMLP (act_fn(gate_proj(x)) * up_proj(x))."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def cross_entropy_eager(logits, targets, z_loss=0.0):
    """Mean over targets != IGNORE_INDEX of -log softmax(logits)[target] + z_loss * logsumexp(logits)^2, in
    fp32 (or wider). logits (N, V), targets (N,). An all-ignored batch gives 0, not NaN. The z-loss is
    CoreNet's (CrossEntropyLM._compute_loss, corenet/loss_fn/language_modeling/cross_entropy.py, after eq. 5
    of ST-MoE, arXiv 2202.08906; projects/openelm/pretraining_configs turn it on at its default 1e-4), except
    that an ignored target adds nothing here: CoreNet zeroes an ignored row's logits, so each adds log(V)^2."""
    x, valid = logits.to(_acc(logits.dtype)), targets != IGNORE_INDEX
    lse = torch.logsumexp(x, dim=-1)
    nll = lse - x.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return ((nll + z_loss * lse * lse) * valid).sum() / valid.sum().clamp(min=1)
