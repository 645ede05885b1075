"""
Tests for the Triton kernels (kernels/flash_attention.py, rmsnorm.py, rope.py) and the switch.

Without a GPU, tests/conftest.py sets TRITON_INTERPRET=1 and the kernels run on the CPU under the
Triton interpreter (fp32 and fp16: the interpreter's bf16 tl.dot is wrong, so bf16 is GPU-only). With
a GPU the same tests run the compiled, autotuned kernels on it, and the GPU-only tests at the end run
too. Every result is compared against the plain-PyTorch reference evaluated in float64.

The interpreter is slow, so the cases are a hand-picked list that covers every value that matters
(causal and not, Tq < Tk and Tq > Tk, GQA ratios 1/4/5, T in 1/17/100/129/300, head_dim 32/64/100/128,
fp32/fp16) without taking their Cartesian product. Outputs are allocated NaN-filled (the `poison`
fixture) so an element a kernel forgets to write fails the test.

The kernels must also run on triton 3.6 (what torch 2.11 installs). Against it, in a venv of its own:
    python3 -m venv /tmp/v36 && /tmp/v36/bin/pip install torch==2.13.0 triton==3.6.0 numpy pytest
    TRITON_INTERPRET=1 /tmp/v36/bin/python -m pytest -q tests/test_kernels.py tests/test_model.py
    /tmp/v36/bin/python -m kernels.compile_check --arch=90     (and --arch=80)
"""
import os

import pytest
import torch

import kernels

triton = pytest.importorskip("triton")
from kernels import flash_attention as fa  # noqa: E402  (after the importorskip)
from kernels import common, rmsnorm, rope  # noqa: E402
from kernels.reference import rel_err  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
needs_triton = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                  reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")
gpu = pytest.mark.gpu  # skipped without CUDA (conftest.py); `pytest -m gpu` runs just these on a GPU
interpreter_only = pytest.mark.skipif(not INTERPRET, reason="fixed block sizes exist only in the interpreter")

f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
# max |kernel - float64 reference| allowed, relative to max(1, max |reference|). fp32 is limited by
# fp32 rounding; fp16 by the fp16 inputs of the matmuls (P and dS are rounded to fp16 as in FA2)
TOL = {f32: 1e-5, f16: 3e-3, bf16: 4e-2}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Kernel outputs and buffers start as NaN instead of whatever memory held."""
    def nan_empty(shape, dtype=None, device=None):
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    for module in (fa, rmsnorm, rope):
        monkeypatch.setattr(module, "_empty", nan_empty)


def check(actual, expected, tol, name):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: {(~torch.isfinite(actual)).sum().item()} non-finite values"
    err = rel_err(actual, expected)
    assert err <= tol, f"{name}: max error {err:.2e} x max(1, max |expected|) > {tol:.0e}"


def leaf(t):
    return t.detach().clone().requires_grad_()


def f64(*ts):
    return [t.detach().double().requires_grad_() for t in ts]


# ----------------------------------------------------------------------------- attention

ATTN_CASES = [  # B, Hq, Hkv, Tq, Tk, D, causal, dtype
    (1, 2, 2, 17, 17, 64, True, f32),      # GQA 1 (plain multi-head), one partial block
    (1, 4, 1, 100, 100, 32, False, f32),   # MQA, group 4, non-causal
    (2, 5, 1, 129, 129, 100, True, f16),   # group 5, head_dim 100 padded to 128
    (1, 8, 2, 17, 300, 128, True, f16),    # Tq < Tk causal: a chunk of queries against a longer cache
    (2, 2, 2, 300, 129, 64, True, f32),    # Tq > Tk causal: the first 171 rows see no key at all
    (1, 5, 1, 129, 17, 32, False, f16),    # Tq > Tk non-causal
    (1, 4, 1, 100, 300, 100, False, f32),  # Tq < Tk non-causal, head_dim 100
    (1, 4, 4, 300, 300, 128, False, f16),  # long non-causal, head_dim 128
    (1, 10, 2, 1, 300, 64, True, f32),     # Tq = 1 with gradients: the autograd path, not decode
    (2, 2, 1, 1, 1, 32, True, f16),        # T = 1 everywhere
    (1, 2, 2, 129, 1, 64, True, f32),      # Tk = 1 < Tq causal: only the last row sees a key
]


def run_attention(B, Hq, Hkv, Tq, Tk, D, causal, dtype):
    torch.manual_seed(0)
    q = torch.randn(B, Hq, Tq, D, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(B, Hkv, Tk, D, device=DEVICE).to(dtype).requires_grad_()
    v = torch.randn(B, Hkv, Tk, D, device=DEVICE).to(dtype).requires_grad_()
    o = fa.attention(q, k, v, causal=causal)
    do = torch.randn(o.shape, device=DEVICE).to(dtype)
    o.backward(do)
    qd, kd, vd = f64(q, k, v)
    od = kernels.attention_eager(qd, kd, vd, causal)
    od.backward(do.double())
    tol = TOL[dtype]
    check(o, od, tol, "out")
    check(q.grad, qd.grad, tol, "dq")
    check(k.grad, kd.grad, tol, "dk")
    check(v.grad, vd.grad, tol, "dv")
    return o, q, k, v


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,Tq,Tk,D,causal,dtype", ATTN_CASES,
                         ids=[f"B{c[0]}-H{c[1]}/{c[2]}-T{c[3]}x{c[4]}-D{c[5]}-{'causal' if c[6] else 'full'}-"
                              f"{str(c[7])[6:]}" for c in ATTN_CASES])
def test_attention_forward_backward(B, Hq, Hkv, Tq, Tk, D, causal, dtype):
    o, q, k, v = run_attention(B, Hq, Hkv, Tq, Tk, D, causal, dtype)
    if causal and Tq > Tk:  # rows that see no key: exactly zero output and zero gradient, no NaN
        blind = Tq - Tk
        assert (o[:, :, :blind] == 0).all()
        assert (q.grad[:, :, :blind] == 0).all()


@interpreter_only
@pytest.mark.parametrize("Tq,Tk,causal", [(17, 100, True), (100, 33, True), (45, 45, False)])
def test_attention_other_block_shapes(monkeypatch, Tq, Tk, causal):
    """The default interpreter blocks have BLOCK_M > BLOCK_N in the forward; swap them, since the
    causal loop bounds depend on how the two relate."""
    monkeypatch.setattr(fa, "INTERPRET_BLOCKS", {"fwd": (16, 32), "dq": (16, 32), "dkdv": (32, 16),
                                                 "decode": 32})
    run_attention(1, 4, 2, Tq, Tk, 64, causal, f32)


@needs_triton
def test_attention_strided_inputs():
    """q, k, v as the model makes them: views of one fused (B, T, (Hq + 2 Hkv) D) projection,
    reshaped to (B, T, H, D) and transposed to (B, H, T, D); none of them is contiguous."""
    B, T, Hq, Hkv, D = 2, 33, 4, 2, 32

    def split(qkv):
        return [t.reshape(B, T, -1, D).transpose(1, 2) for t in qkv.split([Hq * D, Hkv * D, Hkv * D], -1)]

    torch.manual_seed(1)
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, device=DEVICE).requires_grad_()
    o = fa.attention(*split(qkv), causal=True)
    do = torch.randn_like(o)
    o.backward(do)
    qkv_d = qkv.detach().double().requires_grad_()
    od = kernels.attention_eager(*split(qkv_d), causal=True)
    od.backward(do.double())
    check(o, od, TOL[f32], "out")
    check(qkv.grad, qkv_d.grad, TOL[f32], "dqkv")


DECODE_CASES = [  # B, Hq, Hkv, Tk, D, dtype, num_splits
    (2, 4, 1, 300, 64, f32, None),
    (1, 5, 1, 1000, 100, f16, 7),     # group 5, uneven splits
    (1, 2, 2, 1, 32, f32, None),      # a cache of one token
    (3, 8, 2, 129, 128, f16, 64),     # more splits asked for than blocks: rounded down to 9
    (1, 4, 4, 17, 64, f32, 1),        # a single split
]


@needs_triton
@pytest.mark.parametrize("B,Hq,Hkv,Tk,D,dtype,num_splits", DECODE_CASES)
def test_decode(B, Hq, Hkv, Tk, D, dtype, num_splits):
    torch.manual_seed(0)
    q = torch.randn(B, Hq, 1, D, device=DEVICE).to(dtype)
    k = torch.randn(B, Hkv, Tk, D, device=DEVICE).to(dtype)
    v = torch.randn(B, Hkv, Tk, D, device=DEVICE).to(dtype)
    ref = kernels.attention_eager(q.double(), k.double(), v.double(), causal=True)
    check(fa.decode(q, k, v, num_splits), ref, TOL[dtype], "decode")


@needs_triton
def test_attention_dispatches_decode_without_grad(monkeypatch):
    calls = []
    real = fa.decode
    monkeypatch.setattr(fa, "decode", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q = torch.randn(1, 4, 1, 32, device=DEVICE)
    k = torch.randn(1, 2, 40, 32, device=DEVICE)
    with torch.no_grad():
        out = fa.attention(q, k, k, causal=True)
    assert calls == [1]
    check(out, kernels.attention_eager(q.double(), k.double(), k.double()), TOL[f32], "decode via attention")
    fa.attention(q.requires_grad_(), k, k, causal=True)  # needs a gradient: the autograd path
    assert calls == [1]


@needs_triton
def test_attention_under_autocast():
    """Mixed inputs under autocast (q, k out of an fp32-weight QK-norm, v from a half-precision
    projection) are cast to the autocast dtype, as SDPA does, and gradients flow back in each input's dtype."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 20, 32, device=DEVICE, requires_grad=True), torch.randn(1, 2, 20, 32, device=DEVICE)
    v = torch.randn(1, 2, 20, 32, device=DEVICE).half().requires_grad_()
    with torch.autocast(DEVICE, dtype=f16):
        o = fa.attention(q, k, v)
    assert o.dtype == f16
    o.float().sum().backward()
    assert q.grad.dtype == f32 and v.grad.dtype == f16
    qd, kd, vd = f64(q.half(), k.half(), v)
    check(o, kernels.attention_eager(qd, kd, vd), TOL[f16], "out")


def test_attention_rejects_bad_shapes():
    q = torch.randn(1, 3, 4, 16)
    with pytest.raises(ValueError, match="multiple"):
        fa.attention(q, torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16))
    with pytest.raises(ValueError, match="head_dim"):
        fa.attention(torch.randn(1, 2, 4, 300), torch.randn(1, 2, 4, 300), torch.randn(1, 2, 4, 300))
    with pytest.raises(ValueError):
        fa.attention(q, torch.randn(1, 3, 4, 16), torch.randn(1, 3, 5, 16))


def test_supported():
    q, k = torch.randn(1, 8, 5, 64, dtype=f16), torch.randn(1, 2, 5, 64, dtype=f16)
    assert fa.supported(q, k, k)
    assert not fa.supported(q.float(), k.float(), k.float())  # fp32 stays on SDPA under "auto"
    assert not fa.supported(q, k[:, :1].expand(1, 3, 5, 64), k[:, :1].expand(1, 3, 5, 64))  # 8 % 3
    big = torch.randn(1, 2, 5, 512, dtype=f16)
    assert not fa.supported(big, big, big)
    with torch.autocast("cpu", dtype=f16):  # what autocast would hand the kernel counts
        assert fa.supported(q.float(), k.float(), k)


# ----------------------------------------------------------------------------- RMSNorm

NORM_CASES = [  # x shape, x dtype, weight dtype, max_block
    ((7, 33), f32, f32, rmsnorm.MAX_BLOCK),          # odd rows, odd width
    ((3, 5, 64), f16, f16, rmsnorm.MAX_BLOCK),
    ((2, 17, 5, 100), f16, f32, rmsnorm.MAX_BLOCK),  # QK-norm over head_dim; fp32 weight -> fp32 out
    ((301, 64), f32, f32, rmsnorm.MAX_BLOCK),        # more row blocks than backward programs
    ((5, 1000), f32, f32, 128),                      # chunked two-pass path, partial last chunk
    ((3, 3, 129), f16, f16, 32),                     # chunked, fp16
]


@needs_triton
@pytest.mark.parametrize("shape,dtype,wdtype,max_block", NORM_CASES)
def test_rms_norm(shape, dtype, wdtype, max_block):
    torch.manual_seed(0)
    x = (3 * torch.randn(shape, device=DEVICE)).to(dtype).requires_grad_()
    w = (1 + 0.5 * torch.randn(shape[-1], device=DEVICE)).to(wdtype).requires_grad_()
    y = rmsnorm.rms_norm(x, w, 1e-6, max_block=max_block)
    assert y.dtype == torch.promote_types(dtype, wdtype)  # as the eager code's type promotion
    dy = torch.randn(y.shape, device=DEVICE).to(y.dtype)
    y.backward(dy)
    xd, wd = f64(x, w)
    yd = kernels.rms_norm_eager(xd, wd, 1e-6)
    yd.backward(dy.double())
    check(y, yd, TOL[dtype], "y")
    check(x.grad, xd.grad, TOL[dtype], "dx")
    check(w.grad, wd.grad, TOL[dtype] * 4, "dweight")  # a sum over up to 301 rows of rounded terms


@needs_triton
@pytest.mark.parametrize("dtype", [f16, pytest.param(bf16, marks=gpu)])
def test_rms_norm_cast_order(dtype):
    """Normalize, cast to x's dtype, then scale (CoreNet's and HF's order). A float64 reference cannot see
    the cast, so compare with the eager code in the same dtype: the wrong order leaves many elements 1 ulp off."""
    torch.manual_seed(0)
    x = torch.randn(64, 256, device=DEVICE).to(dtype)
    w = (1 + torch.randn(256, device=DEVICE)).to(dtype)
    same = rmsnorm.rms_norm(x, w, 1e-6) == kernels.rms_norm_eager(x, w, 1e-6)
    assert same.float().mean() > 0.99, f"only {same.float().mean():.1%} of elements equal the eager result"


@needs_triton
def test_rms_norm_qk_slice_and_eps():
    """QK-norm on a non-contiguous slice of a fused projection, with a large eps that matters."""
    torch.manual_seed(0)
    B, T, H, D = 2, 9, 3, 32
    qkv = (0.01 * torch.randn(B, T, 3 * H * D, device=DEVICE)).requires_grad_()
    w = torch.randn(D, device=DEVICE).requires_grad_()
    q = qkv[..., : H * D].view(B, T, H, D)
    y = rmsnorm.rms_norm(q, w, 1e-3)
    y.backward(torch.ones_like(y))
    qkv_d, wd = f64(qkv, w)
    yd = kernels.rms_norm_eager(qkv_d[..., : H * D].view(B, T, H, D), wd, 1e-3)
    yd.backward(torch.ones_like(yd))
    check(y, yd, TOL[f32], "y")
    check(qkv.grad, qkv_d.grad, TOL[f32], "dx")
    check(w.grad, wd.grad, TOL[f32], "dweight")


# ----------------------------------------------------------------------------- RoPE

ROPE_CASES = [  # B, T, Hq, Hkv, D, dtype, batch of the cos/sin table
    (2, 17, 5, 1, 64, f32, 1),
    (2, 17, 4, 4, 100, f16, 2),    # half = 50, not a power of two; per-batch table (positions differ)
    (1, 1, 3, 1, 32, f32, 1),
    (1, 5, 20, 4, 256, f32, 1),    # D = 256: 16 rows per program, so programs split tokens
    (3, 129, 8, 2, 128, f16, 3),
]


def rope_inputs(B, T, Hq, Hkv, D, dtype, cb):
    torch.manual_seed(0)
    q = torch.randn(B, T, Hq, D, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(B, T, Hkv, D, device=DEVICE).to(dtype).requires_grad_()
    angle = 10 * torch.randn(cb, T, D // 2, device=DEVICE)
    return q, k, angle.cos(), angle.sin()


def check_rope(q, k, cos, sin, qo, ko, tol):
    dq, dk = torch.randn_like(qo), torch.randn_like(ko)
    ((qo.float() * dq.float()).sum() + (ko.float() * dk.float()).sum()).backward()
    qd, kd = f64(q, k)
    qr, kr = kernels.rope_eager(qd, cos, sin), kernels.rope_eager(kd, cos, sin)
    ((qr * dq.double()).sum() + (kr * dk.double()).sum()).backward()
    check(qo, qr, tol, "q")
    check(ko, kr, tol, "k")
    check(q.grad, qd.grad, tol, "dq")
    check(k.grad, kd.grad, tol, "dk")


@needs_triton
@pytest.mark.parametrize("B,T,Hq,Hkv,D,dtype,cb", ROPE_CASES)
def test_rope(B, T, Hq, Hkv, D, dtype, cb):
    q, k, cos, sin = rope_inputs(B, T, Hq, Hkv, D, dtype, cb)
    qo, ko = rope.apply_rope(q, k, cos, sin)
    assert qo.dtype == dtype and ko.dtype == dtype
    check_rope(q, k, cos, sin, qo, ko, TOL[dtype])


@needs_triton
def test_rope_strided_inputs():
    """q and k as non-contiguous slices of one fused projection (B, T, (Hq + Hkv) * D)."""
    torch.manual_seed(0)
    B, T, Hq, Hkv, D = 2, 11, 4, 2, 64
    qk = torch.randn(B, T, (Hq + Hkv) * D, device=DEVICE).requires_grad_()
    q, k = qk[..., : Hq * D].view(B, T, Hq, D), qk[..., Hq * D:].view(B, T, Hkv, D)
    angle = torch.arange(T, device=DEVICE)[None, :, None] * torch.rand(D // 2, device=DEVICE)
    qo, ko = rope.apply_rope(q, k, angle.cos(), angle.sin())
    (qo.sum() + 2 * ko.sum()).backward()
    qkd = qk.detach().double().requires_grad_()
    qr = kernels.rope_eager(qkd[..., : Hq * D].view(B, T, Hq, D), angle.cos(), angle.sin())
    kr = kernels.rope_eager(qkd[..., Hq * D:].view(B, T, Hkv, D), angle.cos(), angle.sin())
    (qr.sum() + 2 * kr.sum()).backward()
    check(qo, qr, TOL[f32], "q")
    check(ko, kr, TOL[f32], "k")
    check(qk.grad, qkd.grad, TOL[f32], "dqk")


def test_rope_rejects_bad_table():
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="cos"):
        rope.apply_rope(q, k, torch.randn(1, 5, 4), torch.randn(1, 4, 4))


# ----------------------------------------------------------------------------- the switch

@needs_triton
def test_switch_triton_backend():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 19, 32, device=DEVICE), torch.randn(2, 2, 23, 32, device=DEVICE)
    check(kernels.attention(q, k, k, backend="triton"), kernels.attention_eager(q.double(), k.double(),
          k.double()), TOL[f32], "attention")
    with pytest.raises(ValueError, match="mask"):
        kernels.attention(q, k, k, mask=torch.ones(19, 23, dtype=torch.bool, device=DEVICE), backend="triton")
    x, w = torch.randn(3, 7, 32, device=DEVICE), torch.randn(32, device=DEVICE)
    check(kernels.rms_norm(x, w, 1e-6, backend="triton"), kernels.rms_norm_eager(x.double(), w.double(), 1e-6),
          TOL[f32], "rms_norm")
    q, k, cos, sin = rope_inputs(2, 5, 4, 2, 32, f32, 1)
    got = kernels.apply_rope(q, k, cos, sin, backend="triton")
    check(got[0], kernels.rope_eager(q.double(), cos, sin), TOL[f32], "rope q")
    check(got[1], kernels.rope_eager(k.double(), cos, sin), TOL[f32], "rope k")


def test_switch_auto_on_cpu_stays_off_triton(monkeypatch):
    """CPU tensors under "auto" must never reach the (interpreted, slow) Triton kernels."""
    def boom(*args, **kwargs):
        raise AssertionError("auto sent CPU tensors to Triton")
    monkeypatch.setattr(fa, "attention", boom)
    monkeypatch.setattr(rmsnorm, "rms_norm", boom)
    monkeypatch.setattr(rope, "apply_rope", boom)
    q, k = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 6, 16)
    check(kernels.attention(q, k, k), kernels.attention_eager(q.double(), k.double(), k.double()), 1e-5, "attn")
    kernels.rms_norm(q, torch.ones(16), 1e-6)
    kernels.apply_rope(q.transpose(1, 2), k.transpose(1, 2), torch.ones(1, 6, 8), torch.zeros(1, 6, 8))


@pytest.fixture
def auto_on_cpu(monkeypatch):
    """"auto" takes the CPU interpreter's tensors for a GPU's, with nothing checked yet in this process."""
    monkeypatch.setattr(kernels, "_on_gpu", lambda t: True)
    monkeypatch.setattr(kernels, "_checked", {})


@interpreter_only
def test_auto_checks_a_triton_kernel_once_then_uses_it(auto_on_cpu, monkeypatch, capsys):
    """The first "auto" call of an (op, dtype) runs the check's small problem through the kernel, then the
    call itself; later calls only the call. A kernel that passes prints nothing."""
    calls = []
    real = rmsnorm.rms_norm
    monkeypatch.setattr(rmsnorm, "rms_norm", lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a))
    x, w = torch.randn(5, 3, 32), torch.randn(32)
    rng = torch.get_rng_state()
    y = kernels.rms_norm(x, w, 1e-6)
    assert calls == [(80, 32), (5, 3, 32)]  # the check's problem, then the call
    assert torch.equal(torch.get_rng_state(), rng)  # the check draws from its own generator
    kernels.rms_norm(x, w, 1e-6)
    assert calls[2:] == [(5, 3, 32)] and kernels._checked == {("rms_norm", f32): True}
    assert capsys.readouterr().err == ""
    check(y, kernels.rms_norm_eager(x.double(), w.double(), 1e-6), TOL[f32], "rms_norm")
    q, k = torch.randn(1, 4, 20, 32).half(), torch.randn(1, 2, 20, 32).half()  # attention: fp16 only
    check(kernels.attention(q, k, k), kernels.attention_eager(q.double(), k.double(), k.double()), TOL[f16], "attn")
    assert kernels._checked[("attention", f16)] is True and capsys.readouterr().err == ""


@interpreter_only
def test_auto_falls_back_for_good_when_the_triton_kernel_is_wrong(auto_on_cpu, monkeypatch, capsys):
    """A kernel 50% off, or one that raises: one warning line naming op, dtype and error, then the non-Triton
    values (bit for bit the eager ones) for the rest of the process; "triton" still runs the kernel."""
    real = rmsnorm.rms_norm
    monkeypatch.setattr(rmsnorm, "rms_norm", lambda x, w, eps: real(x, w, eps) * 1.5)
    x, w = torch.randn(5, 3, 32), torch.randn(32)
    for _ in range(2):
        assert torch.equal(kernels.rms_norm(x, w, 1e-6), kernels.rms_norm_eager(x, w, 1e-6))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: kernels: the Triton rms_norm kernel is off by 0.5 x")
    assert "float32" in err[0] and kernels._checked == {("rms_norm", f32): False}
    assert torch.equal(kernels.rms_norm(x, w, 1e-6, backend="triton"), 1.5 * real(x, w, 1e-6))  # never replaced

    def fails(*args):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")
    monkeypatch.setattr(rope, "apply_rope", fails)
    q, k, cos, sin = rope_inputs(2, 5, 4, 2, 32, f32, 1)
    got = kernels.apply_rope(q, k, cos, sin)
    assert torch.equal(got[0], kernels.rope_eager(q, cos, sin)) and torch.equal(got[1], kernels.rope_eager(k, cos, sin))
    assert capsys.readouterr().err.splitlines() == [
        "warning: kernels: the Triton rope kernel raised RuntimeError: CUDA error: no kernel image is available for "
        "execution on the device on a small float32 problem; backend 'auto' runs the non-Triton rope for float32 "
        "from now on ('triton' still forces the kernel)"]


@interpreter_only
def test_auto_check_runs_eagerly_under_torch_compile(auto_on_cpu, monkeypatch, capsys):
    """Traced for the first time, "auto" still checks the kernel, eagerly: the answer becomes a constant."""
    x, w = torch.randn(5, 3, 32), torch.randn(32)
    norm = torch.compile(lambda x, w: kernels.rms_norm(x, w, 1e-6), fullgraph=True, backend="aot_eager")
    check(norm(x, w), kernels.rms_norm_eager(x.double(), w.double(), 1e-6), TOL[f32], "compiled rms_norm")
    assert kernels._checked == {("rms_norm", f32): True} and capsys.readouterr().err == ""
    real = rmsnorm.rms_norm
    monkeypatch.setattr(rmsnorm, "rms_norm", lambda x, w, eps: real(x, w, eps) * 1.5)
    monkeypatch.setattr(kernels, "_checked", {})
    torch._dynamo.reset()
    assert torch.equal(norm(x, w), kernels.rms_norm_eager(x, w, 1e-6))
    assert len(capsys.readouterr().err.splitlines()) == 1 and kernels._checked == {("rms_norm", f32): False}


@interpreter_only
def test_runtime_loop_bounds_under_the_triton_36_interpreter(monkeypatch):
    """triton 3.6's interpreter (and earlier ones) turns a runtime loop bound (a 1-element array) into an
    int with int(array), which NumPy >= 2.4 refuses; kernels/common.py fixes that in the interpreter. Whichever
    triton is installed, emulate that interpreter: the kernels whose loops have runtime bounds fail without
    the fix, run with it.
    (The whole suite against triton 3.6 itself: see tests/test_kernels.py's module docstring.)"""
    from triton.runtime import interpreter

    installed = interpreter._patch_lang_tensor

    def strict_index(self):  # int(array) under NumPy >= 2.4
        if self.handle.data.ndim:
            raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
        return int(self.handle.data)

    def triton_36(tensor, scope):
        installed(tensor, scope)
        scope.set_attr(tensor, "__index__", strict_index)

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", triton_36)
    x, w = torch.randn(5, 40), torch.randn(40)
    with pytest.raises(Exception, match="only 0-dimensional arrays"):
        rmsnorm.rms_norm(x, w, 1e-6, max_block=16)  # the chunked path loops over column blocks of D
    common.allow_runtime_loop_bounds(interpreter)  # what importing kernels.common does under the interpreter
    check(rmsnorm.rms_norm(x, w, 1e-6, max_block=16), kernels.rms_norm_eager(x.double(), w.double(), 1e-6),
          TOL[f32], "rms_norm, chunked")
    run_attention(1, 4, 2, 20, 37, 32, True, f32)  # forward, dq and dk/dv loops, causal bounds, GQA loop
    q, k = torch.randn(1, 2, 1, 32), torch.randn(1, 1, 40, 32)
    check(fa.decode(q, k, k, num_splits=2), kernels.attention_eager(q.double(), k.double(), k.double()),
          TOL[f32], "decode")


PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this triton has no NVIDIA backend to compile with")
def test_kernels_compile_for_an_h100():
    """The interpreter never lowers a kernel for a GPU (tl.dot's bf16 layouts, shared memory, registers):
    compile every kernel, bf16, head_dim 64 and 128, first autotuning config, to an sm_90 cubin, with the
    launchers' own arguments, in a process without TRITON_INTERPRET (python -m kernels.compile_check)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(kernels.__file__)))
    p = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--quick"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for name in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_decode_split_kernel", "_rope_kernel",
                 "rmsnorm._bwd_kernel"):
        assert name in p.stdout
    assert "0 failed, 0 without a fitting config" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--arch=100"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == ["error: --arch=100 is not one of 80, 86, 89, 90 (compute capability x 10)"]


@needs_triton
def test_torch_compile_fullgraph():
    """The kernels are custom ops, so torch.compile can capture them in one graph (sample.py compiles
    its decode step with fullgraph=True); aot_eager also runs their fake (shape) functions and backward."""
    torch.manual_seed(0)
    B, T, Hq, Hkv, D = 2, 9, 4, 2, 32

    def block(x, w, cos, sin):  # (B, T, (Hq + 2 Hkv) * D) -> QK-norm -> RoPE -> attention
        q, k, v = x.view(B, T, Hq + 2 * Hkv, D).split([Hq, Hkv, Hkv], dim=2)
        q, k = rmsnorm.rms_norm(q, w, 1e-6), rmsnorm.rms_norm(k, w, 1e-6)
        q, k = rope.apply_rope(q, k, cos, sin)
        return fa.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)

    x = torch.randn(B, T, (Hq + 2 * Hkv) * D, device=DEVICE, requires_grad=True)
    w = torch.randn(D, device=DEVICE, requires_grad=True)
    angle = torch.randn(1, T, D // 2, device=DEVICE)
    args = (x, w, angle.cos(), angle.sin())
    outs = []
    for fn in (block, torch.compile(block, fullgraph=True, backend="aot_eager")):
        o = fn(*args)
        o.square().sum().backward()
        outs.append((o.detach(), x.grad, w.grad))
        x.grad = w.grad = None
    for a, b, name in zip(*outs, ("out", "dx", "dweight")):
        check(a, b, TOL[f32], name)
    with torch.no_grad():  # Tq == 1 without gradients: the decode op, compiled
        q, k = torch.randn(B, Hq, 1, D, device=DEVICE), torch.randn(B, Hkv, 40, D, device=DEVICE)
        got = torch.compile(lambda q, k: fa.attention(q, k, k), fullgraph=True, backend="aot_eager")(q, k)
    check(got, kernels.attention_eager(q.double(), k.double(), k.double()), TOL[f32], "decode")


@needs_triton
def test_model_training_steps_triton_matches_eager():
    """End to end through model.py in fp32: QK-norm, RoPE, GQA attention and the norms all on the Triton
    backend, three AdamW steps, the same losses as the eager backend."""
    from model import ModelConfig, Transformer

    def train(backend):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                          ffn_dim=128, qk_norm=True, backend=backend)
        model = Transformer(cfg).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1)).to(DEVICE)
        losses = []
        for _ in range(3):
            _, loss = model(idx[:, :-1], idx[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    tri, ref = train("triton"), train("eager")
    assert tri[-1] < tri[0]
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(tri, ref)), f"triton {tri} vs eager {ref}"


# ----------------------------------------------------------------------------- GPU only

GPU_SHAPES = [  # name, B, Hq, Hkv, T, D
    ("openelm", 2, 12, 3, 2048, 64),       # OpenELM: head_dim 64, 4 query heads per kv head
    ("llama7b", 1, 32, 32, 2048, 128),     # LLaMA-7B: 32 heads of 128
    ("openllama3b", 1, 32, 32, 2048, 100),  # OpenLLaMA-3B: head_dim 100
]


@gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name,B,Hq,Hkv,T,D", GPU_SHAPES)
def test_gpu_attention_bf16_model_shapes(name, B, Hq, Hkv, T, D, causal):
    """bf16 at real shapes: close to SDPA, and no further from an fp32 reference than SDPA is."""
    torch.manual_seed(0)
    q = torch.randn(B, Hq, T, D, device="cuda", dtype=bf16)
    k = torch.randn(B, Hkv, T, D, device="cuda", dtype=bf16)
    v = torch.randn(B, Hkv, T, D, device="cuda", dtype=bf16)
    do = torch.randn(B, Hq, T, D, device="cuda", dtype=bf16)
    results = {}
    for backend in ("triton", "sdpa", "ref"):
        qq, kk, vv = [leaf(t.float() if backend == "ref" else t) for t in (q, k, v)]
        if backend == "ref":
            o = kernels.attention_eager(qq, kk, vv, causal)
        else:
            o = kernels.attention(qq, kk, vv, causal, backend=backend)
        o.backward(do.to(o.dtype))
        results[backend] = [o, qq.grad, kk.grad, vv.grad]
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        tri, sdpa, ref = (results[b][i].float() for b in ("triton", "sdpa", "ref"))
        scale = ref.abs().max().item()
        check(tri, sdpa, TOL[bf16], f"{name} {what} vs SDPA")
        err_tri, err_sdpa = (tri - ref).abs().max().item(), (sdpa - ref).abs().max().item()
        assert err_tri <= 3 * err_sdpa + 1e-3 * scale, f"{name} {what}: {err_tri:.2e} vs SDPA's {err_sdpa:.2e}"


@gpu
def test_gpu_auto_dispatch(capsys):
    """"auto" on this GPU: each kernel passes its one-time check (no warning) and is used."""
    q = torch.randn(1, 4, 64, 64, device="cuda", dtype=bf16)
    k = torch.randn(1, 1, 64, 64, device="cuda", dtype=bf16)
    assert fa.supported(q, k, k)
    check(kernels.attention(q, k, k), kernels.attention_sdpa(q, k, k).float(), TOL[bf16], "auto")
    assert not fa.supported(q.float(), k.float(), k.float())  # fp32 on CUDA goes to SDPA
    x, w = torch.randn(8, 256, device="cuda", dtype=bf16), torch.ones(256, device="cuda")
    kernels.rms_norm(x, w, 1e-6)
    kernels.apply_rope(*rope_inputs(1, 16, 4, 1, 64, bf16, 1))
    assert capsys.readouterr().err == ""
    assert all(kernels._checked.get((op, bf16)) for op in ("attention", "rms_norm", "rope")), kernels._checked


@gpu
@pytest.mark.parametrize("Tk", [4096, 16384, 65536])
def test_gpu_decode_long_cache(Tk):
    torch.manual_seed(0)
    q = torch.randn(2, 32, 1, 128, device="cuda", dtype=bf16)
    k = torch.randn(2, 8, Tk, 128, device="cuda", dtype=bf16)
    v = torch.randn(2, 8, Tk, 128, device="cuda", dtype=bf16)
    with torch.no_grad():
        got = kernels.attention(q, k, v, backend="triton")
    ref = kernels.attention_sdpa(q, k, v)
    check(got.float(), ref.float(), 1e-2, "decode vs SDPA")


@gpu
def test_gpu_norm_and_rope_bf16():
    torch.manual_seed(0)
    x = torch.randn(4, 2048, 2048, device="cuda", dtype=bf16)
    w = (1 + 0.1 * torch.randn(2048, device="cuda")).to(bf16)
    check(rmsnorm.rms_norm(x, w, 1e-6).float(), kernels.rms_norm_eager(x, w, 1e-6).float(), 1e-2, "rms_norm")
    q, k, cos, sin = rope_inputs(4, 2048, 12, 3, 64, bf16, 1)
    qo, ko = rope.apply_rope(q, k, cos, sin)
    check(qo.float(), kernels.rope_eager(q, cos, sin).float(), 1e-2, "rope q")
    check(ko.float(), kernels.rope_eager(k, cos, sin).float(), 1e-2, "rope k")


@gpu
def test_gpu_training_steps_triton_matches_sdpa():
    """A few AdamW steps of a tiny model: the Triton backend's losses track the SDPA backend's."""
    from model import ModelConfig, Transformer

    def train(backend):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=256, block_size=128, n_layer=2, n_embd=128, n_head=4, n_kv_head=2,
                          ffn_dim=256, qk_norm=True, backend=backend)
        model = Transformer(cfg).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator(device="cuda").manual_seed(1)
        idx = torch.randint(0, 256, (4, 129), device="cuda", generator=gen)
        losses = []
        for _ in range(8):  # the same batch each step, so the loss must fall
            with torch.autocast("cuda", dtype=bf16):
                _, loss = model(idx[:, :-1], idx[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    tri, sdpa = train("triton"), train("sdpa")
    assert tri[-1] < tri[0] - 0.5, f"triton backend did not learn: {tri}"
    for a, b in zip(tri, sdpa):
        assert abs(a - b) <= 2e-2 * abs(b), f"losses diverge: triton {tri} vs sdpa {sdpa}"
