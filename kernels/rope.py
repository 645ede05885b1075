"""
Rotary position embedding (RoPE) in Triton: q and k rotated in one fused pass, forward and backward.

    apply_rope(q, k, cos, sin) -> (q, k)   q (B, T, Hq, D), k (B, T, Hkv, D), cos/sin (B or 1, T, D/2) fp32
    reference                              the plain-PyTorch semantics (kernels/reference.py: rope_eager)

Rotate-half layout (Hugging Face / OpenELM): the pair (x[i], x[i + D/2]) rotates by the angle whose
cosine and sine are cos[..., i], sin[..., i]. The math is fp32 and the result is cast to the input's
dtype, as OpenELM rotates: CoreNet's RotaryEmbedding.forward (corenet/modeling/layers/rotary_embeddings.py)
rotates query.float() and key.float() and casts back with type_as.

The kernel works on rows: a row is one head of one token, (b, t, h), of either q or k, and a program
rotates BLOCK_R rows (about 4k elements) with the cos/sin of each row's token. The heads of a token sit
in neighbouring rows of one program, so the angle table is fetched from memory about once per token,
and q and k share one launch (the first programs take q's rows, the rest k's). The backward of a
rotation is the rotation by the opposite angle: the same kernel with sin negated. cos and sin get no
gradient (they are a fixed table).
"""
import torch
import triton
import triton.language as tl

from kernels.common import prep, strides
from kernels.reference import rope_eager as reference  # the semantics this file implements

_empty = torch.empty  # tests swap in a NaN-filling allocator to catch unwritten elements


@triton.jit
def _rotate_rows(X, Y, COS, SIN, row0, n_rows, T, H, sxb, sxt, sxh, syb, syt, syh, scb, sct, ssb, sst,
                 HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HALF: tl.constexpr, SIGN: tl.constexpr):
    """Rotates rows [row0, row0 + BLOCK_R) of a (B, T, H, D) tensor; row = (b * T + t) * H + h."""
    r = (row0 + tl.arange(0, BLOCK_R)).to(tl.int64)
    h = r % H
    t = (r // H) % T
    b = r // H // T
    offs = tl.arange(0, BLOCK_HALF)
    mask = (r < n_rows)[:, None] & (offs < HALF)[None, :]
    c = tl.load(COS + (b * scb + t * sct)[:, None] + offs[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SIN + (b * ssb + t * sst)[:, None] + offs[None, :], mask=mask, other=0.0).to(tl.float32)
    s = s * SIGN
    x_ptr = X + (b * sxb + t * sxt + h * sxh)[:, None] + offs[None, :]
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    y_ptr = Y + (b * syb + t * syt + h * syh)[:, None] + offs[None, :]
    tl.store(y_ptr, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(y_ptr + HALF, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN, sqb, sqt, sqh, skb, skt, skh, sqob, sqot, sqoh,
                 skob, skot, skoh, scb, sct, ssb, sst, T, Hq, Hkv, n_q_rows, n_k_rows, q_programs,
                 HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HALF: tl.constexpr,
                 SIGN: tl.constexpr):
    pid = tl.program_id(0)
    if pid < q_programs:
        _rotate_rows(Q, QO, COS, SIN, pid * BLOCK_R, n_q_rows, T, Hq, sqb, sqt, sqh, sqob, sqot, sqoh,
                     scb, sct, ssb, sst, HALF, BLOCK_R, BLOCK_HALF, SIGN)
    else:
        _rotate_rows(K, KO, COS, SIN, (pid - q_programs) * BLOCK_R, n_k_rows, T, Hkv, skb, skt, skh,
                     skob, skot, skoh, scb, sct, ssb, sst, HALF, BLOCK_R, BLOCK_HALF, SIGN)


def _rotate(q, k, cos, sin, sign):
    """Launches the kernel; sign=-1 rotates by the opposite angle (the backward)."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    q, k, cos, sin = prep(q), prep(k), prep(cos), prep(sin)
    qo = _empty(q.shape, dtype=q.dtype, device=q.device)
    ko = _empty(k.shape, dtype=k.dtype, device=k.device)
    half = D // 2
    block_half = triton.next_power_of_2(half)
    block_r = max(1, 2048 // block_half)  # rows per program: 4k elements of x
    n_q_rows, n_k_rows = B * T * Hq, B * T * Hkv
    q_programs = triton.cdiv(n_q_rows, block_r)
    # a (1, T, D/2) table serves every batch row: stride 0 over b
    table = dict(scb=cos.stride(0) if cos.shape[0] > 1 else 0, sct=cos.stride(1),
                 ssb=sin.stride(0) if sin.shape[0] > 1 else 0, sst=sin.stride(1))
    _rope_kernel[(q_programs + triton.cdiv(n_k_rows, block_r),)](
        Q=q, K=k, QO=qo, KO=ko, COS=cos, SIN=sin, **strides("sq", q, "bth"), **strides("sk", k, "bth"),
        **strides("sqo", qo, "bth"), **strides("sko", ko, "bth"), **table, T=T, Hq=Hq, Hkv=Hkv,
        n_q_rows=n_q_rows, n_k_rows=n_k_rows, q_programs=q_programs, HALF=half, BLOCK_R=block_r,
        BLOCK_HALF=block_half, SIGN=sign, num_warps=4)
    return qo, ko


# A custom op: torch.compile sees an opaque call with known output shapes (see flash_attention.py).
@torch.library.custom_op("nanoelm::rope", mutates_args=())
def _rotate_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _rotate(q, k, cos, sin, sign)


@_rotate_op.register_fake
def _(q, k, cos, sin, sign):
    return q.new_empty(q.shape), k.new_empty(k.shape)


class RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate_op(q, k, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = _rotate_op(dq, dk, cos, sin, -1.0)
        return dq, dk, None, None


def apply_rope(q, k, cos, sin):
    """Rotates q (B, T, Hq, D) and k (B, T, Hkv, D) by the angles in cos, sin (B or 1, T, D/2)."""
    B, T, _, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[1] != T or k.shape[3] != D or D % 2:
        raise ValueError(f"apply_rope wants q (B, T, Hq, D) and k (B, T, Hkv, D) with D even; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 3 or t.shape[0] not in (1, B) or t.shape[1:] != (T, D // 2):
            raise ValueError(f"apply_rope: {name} has shape {tuple(t.shape)}, expected ({B} or 1, {T}, "
                             f"{D // 2})")
    if q.numel() == 0 or k.numel() == 0:
        return reference(q, cos, sin), reference(k, cos, sin)
    return RoPE.apply(q, k, cos, sin)
