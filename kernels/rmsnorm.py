"""
Fused RMSNorm in Triton: forward, and a backward that returns dx and dweight.

    rms_norm(x, weight, eps)   x (..., D) of any leading shape, weight (D,)
    reference                  the plain-PyTorch semantics (kernels/reference.py: rms_norm_eager)

Semantics: normalize in fp32, cast to x's dtype, THEN multiply by the weight, so
y = (x * rstd).to(x.dtype) * weight with rstd = 1 / sqrt(mean(x^2) + eps): the order of CoreNet's
RMSNorm.forward and HF's LlamaRMSNorm.forward (see rms_norm_eager); scaling in fp32 first differs in
bf16. The output dtype is torch's promotion of x's and weight's dtypes, as in the eager code (bf16 x with
an fp32 weight gives fp32). The same kernel serves the model norms (D = model dim) and QK-norm
(x (B, T, H, head_dim)).

Layout: rows of BLOCK_R x BLOCK_D elements per program. Small D (QK-norm, D = 64) packs many rows per
program, large D one row. A row wider than MAX_BLOCK is processed in column chunks, in two passes
(sum of squares, then normalize), so any D works; the common sizes take the one-pass path.

Backward: dx = rstd * (dn - xhat * mean(dn * xhat)) with dn = dy * weight, xhat = x * rstd (the cast
between xhat and the weight is treated as identity, as autograd does for .to()). dweight = sum over rows
of dy * (x * rstd).to(x.dtype): a fixed number of programs each loop over many row blocks and write one
fp32 partial sum of dweight; the few partials are then summed, so no atomics and a deterministic result.
"""
import torch
import triton
import triton.language as tl

from kernels import common  # importing it also fixes triton 3.6's interpreter
from kernels.reference import rms_norm_eager as reference  # the semantics this file implements

MAX_BLOCK = 8192  # widest row held in registers at once; wider rows take the chunked two-pass path
_empty = torch.empty  # tests swap in a NaN-filling allocator to catch unwritten elements


@triton.jit
def _fwd_kernel(X, W, Y, RSTD, sx, sy, N, D, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                ONE_PASS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_D)
    x_rows = X + rows.to(tl.int64)[:, None] * sx
    y_rows = Y + rows.to(tl.int64)[:, None] * sy
    if ONE_PASS:
        mask = row_ok[:, None] & (cols[None, :] < D)
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, 1) / D + eps)
        w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
        n = (x * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)  # the cast before the weight
        tl.store(y_rows + cols[None, :], (n * w[None, :]).to(Y.dtype.element_ty), mask=mask)
    else:
        ss = tl.zeros([BLOCK_R], tl.float32)
        for c0 in range(0, D, BLOCK_D):
            mask = row_ok[:, None] & (c0 + cols[None, :] < D)
            x = tl.load(x_rows + c0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            ss += tl.sum(x * x, 1)
        rstd = tl.rsqrt(ss / D + eps)
        for c0 in range(0, D, BLOCK_D):
            mask = row_ok[:, None] & (c0 + cols[None, :] < D)
            x = tl.load(x_rows + c0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.load(W + c0 + cols, mask=c0 + cols < D, other=0.0).to(tl.float32)
            n = (x * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
            tl.store(y_rows + c0 + cols[None, :], (n * w[None, :]).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_ok)  # saved so the backward need not reduce x again


@triton.jit
def _bwd_kernel(X, W, DY, DX, RSTD, DW_PART, sx, sdy, sdx, N, D, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr, ONE_PASS: tl.constexpr):
    """Each program handles row blocks pid, pid + P, pid + 2P, ... and owns row pid of DW_PART."""
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK_R
    cols = tl.arange(0, BLOCK_D)
    part = DW_PART + pid.to(tl.int64) * D
    if ONE_PASS:
        col_ok = cols < D
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_D], tl.float32)
        for r0 in range(pid * BLOCK_R, N, step):
            rows = r0 + tl.arange(0, BLOCK_R)
            row_ok = rows < N
            mask = row_ok[:, None] & col_ok[None, :]
            r64 = rows.to(tl.int64)[:, None]
            x = tl.load(X + r64 * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + r64 * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
            xhat = x * rstd[:, None]
            dw += tl.sum(dy * xhat.to(X.dtype.element_ty).to(tl.float32), 0)
            dn = dy * w[None, :]
            c = tl.sum(dn * xhat, 1) / D
            dx = (dn - xhat * c[:, None]) * rstd[:, None]
            tl.store(DX + r64 * sdx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        tl.store(part + cols, dw, mask=col_ok)
    else:
        # DW_PART is zero-initialised here: a program adds into its own row, chunk by chunk
        for r0 in range(pid * BLOCK_R, N, step):
            rows = r0 + tl.arange(0, BLOCK_R)
            row_ok = rows < N
            r64 = rows.to(tl.int64)[:, None]
            rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
            c = tl.zeros([BLOCK_R], tl.float32)
            for c0 in range(0, D, BLOCK_D):
                mask = row_ok[:, None] & (c0 + cols[None, :] < D)
                x = tl.load(X + r64 * sx + c0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + r64 * sdy + c0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                w = tl.load(W + c0 + cols, mask=c0 + cols < D, other=0.0).to(tl.float32)
                c += tl.sum(dy * w[None, :] * x * rstd[:, None], 1)
            c = c / D
            for c0 in range(0, D, BLOCK_D):
                col_ok = c0 + cols < D
                mask = row_ok[:, None] & col_ok[None, :]
                x = tl.load(X + r64 * sx + c0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + r64 * sdy + c0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                w = tl.load(W + c0 + cols, mask=col_ok, other=0.0).to(tl.float32)
                xhat = x * rstd[:, None]
                dx = (dy * w[None, :] - xhat * c[:, None]) * rstd[:, None]
                tl.store(DX + r64 * sdx + c0 + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
                acc = tl.load(part + c0 + cols, mask=col_ok, other=0.0)
                acc += tl.sum(dy * xhat.to(X.dtype.element_ty).to(tl.float32), 0)
                tl.store(part + c0 + cols, acc, mask=col_ok)


# ----------------------------------------------------------------------------- launchers

def _blocks(N, D, max_block):
    """(BLOCK_R, BLOCK_D, ONE_PASS, num_warps): about 4k elements per program, one row at least."""
    block_d = min(triton.next_power_of_2(D), max_block)
    block_r = min(max(1, 4096 // block_d), triton.next_power_of_2(N))
    elems = block_r * block_d
    return block_r, block_d, block_d >= D, 4 if elems <= 2048 else 8 if elems <= 8192 else 16


def _rows(t, D):
    """t as a (N, D) matrix with unit column stride, viewed if possible (a slice of a fused QKV
    projection cannot be, and is copied)."""
    t2 = t.reshape(-1, D)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _forward(x2, weight, eps, max_block):
    N, D = x2.shape
    block_r, block_d, one_pass, warps = _blocks(N, D, max_block)
    y = _empty((N, D), dtype=torch.promote_types(x2.dtype, weight.dtype), device=x2.device)
    rstd = _empty((N,), dtype=torch.float32, device=x2.device)
    _fwd_kernel[(triton.cdiv(N, block_r),)](X=x2, W=weight, Y=y, RSTD=rstd, sx=x2.stride(0), sy=y.stride(0),
                                            N=N, D=D, eps=eps, BLOCK_R=block_r, BLOCK_D=block_d,
                                            ONE_PASS=one_pass, num_warps=warps)
    return y, rstd


def _backward(x2, weight, rstd, dy2, max_block):
    N, D = x2.shape
    block_r, block_d, one_pass, warps = _blocks(N, D, max_block)
    # enough programs to fill the GPU a few times over, few enough that summing their partials is cheap
    programs = min(triton.cdiv(N, block_r), 4 if common.INTERPRET else 4 * common.num_sms(x2.device.index or 0))
    dx = _empty((N, D), dtype=x2.dtype, device=x2.device)
    alloc = _empty if one_pass else torch.zeros  # the chunked path accumulates into its partial row
    dw_part = alloc((programs, D), dtype=torch.float32, device=x2.device)
    _bwd_kernel[(programs,)](X=x2, W=weight, DY=dy2, DX=dx, RSTD=rstd, DW_PART=dw_part, sx=x2.stride(0),
                             sdy=dy2.stride(0), sdx=dx.stride(0), N=N, D=D, BLOCK_R=block_r, BLOCK_D=block_d,
                             ONE_PASS=one_pass, num_warps=warps)
    return dx, dw_part.sum(0).to(weight.dtype)


# Custom ops: torch.compile sees opaque calls with known output shapes (see flash_attention.py).

@torch.library.custom_op("nanoelm::rms_norm_fwd", mutates_args=())
def _forward_op(x2: torch.Tensor, weight: torch.Tensor, eps: float,
                max_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(x2, weight, eps, max_block)


@_forward_op.register_fake
def _(x2, weight, eps, max_block):
    return (x2.new_empty(x2.shape, dtype=torch.promote_types(x2.dtype, weight.dtype)),
            x2.new_empty(x2.shape[:1], dtype=torch.float32))


@torch.library.custom_op("nanoelm::rms_norm_bwd", mutates_args=())
def _backward_op(x2: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dy2: torch.Tensor,
                 max_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(x2, weight, rstd, dy2, max_block)


@_backward_op.register_fake
def _(x2, weight, rstd, dy2, max_block):
    return x2.new_empty(x2.shape), weight.new_empty(weight.shape)


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, max_block=MAX_BLOCK):
        D = x.shape[-1]
        x2 = _rows(x, D)
        y, rstd = _forward_op(x2, weight, eps, max_block)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape, ctx.max_block = x.shape, max_block
        return y.view(*x.shape[:-1], D)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = _backward_op(x2, weight, rstd, _rows(dy, x2.shape[1]), ctx.max_block)
        return dx.view(ctx.x_shape), dw, None, None


def rms_norm(x, weight, eps, max_block=MAX_BLOCK):
    """RMSNorm over the last dim of x. max_block caps the columns held at once (tests lower it to
    exercise the chunked path that rows wider than MAX_BLOCK take)."""
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: weight of shape {tuple(weight.shape)} does not match the last "
                         f"dim of x {tuple(x.shape)}")
    if x.numel() == 0:
        return reference(x, weight, eps)
    return RMSNorm.apply(x, weight, eps, max_block)
