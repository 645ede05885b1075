import dataclasses
import glob
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import configurator
from model import IGNORE_INDEX, ModelConfig, Transformer, per_layer
from configurator import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def config_from_file(name, **overrides):
    import train
    return train.config_of(os.path.join(ROOT, "configs", f"{name}.py"), **overrides)


def tiny_elm(**kw):  # OpenELM-shaped: layer-wise scaling, GQA 4, QK-norm, tied embeddings
    base = dict(vocab_size=97, block_size=64, n_layer=4, n_embd=64, head_dim=16, qkv_multipliers=(0.5, 1.0),
                ffn_multipliers=(0.5, 4.0), num_gqa_groups=4, ffn_dim_divisor=32, qk_norm=True,
                tie_embeddings=True, init="corenet")
    return ModelConfig(**{**base, **kw})


def tiny_llama(**kw):  # LLaMA-shaped: uniform, untied, head_dim 10 (not a power of two, like OpenLLaMA-3B's 100)
    base = dict(vocab_size=97, block_size=64, n_layer=3, n_embd=60, n_head=6, n_kv_head=2, ffn_dim=96)
    return ModelConfig(**{**base, **kw})


def build(config, seed=0):
    torch.manual_seed(seed)
    return Transformer(config).eval()


# ----------------------------------------------------------------------------- the released models' numbers

SPEC_PARAMS = {"elm_270m": 271.53e6, "elm_450m": 457.18e6, "elm_1_1b": 1079.89e6, "elm_3b": 3036.65e6,
               "open_llama_3b": 3.426e9, "open_llama_7b": 6.738e9, "open_llama_13b": 13.016e9}


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_param_counts_match_spec(name):
    with torch.device("meta"):
        model = Transformer(config_from_file(name))
    assert all(p.is_meta for p in model.parameters())  # nothing allocated, even for 13B
    expected = SPEC_PARAMS[name]
    digits = 2 if name.startswith("elm") else 3  # 271.53M (tied, V=32000) and 3.426B, counted from the released shapes
    unit = 1e6 if name.startswith("elm") else 1e9
    assert round(model.num_params() / unit, digits) == round(expected / unit, digits)


def expand(runs):  # "12x5" style runs -> list
    return [v for v, n in runs for _ in range(n)]


SPEC_LAYERS = {  # per-layer heads and FFN widths of the released configs (OpenELM-1_1B's config.json)
    "elm_270m": (expand([(12, 5), (16, 7), (20, 4)]),
                 [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608, 4864, 5120]),
    "elm_450m": (expand([(12, 3), (16, 7), (20, 6), (24, 4)]),
                 [768, 1024, 1280, 1536, 1792, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4352, 4608, 5120,
                  5376, 5632, 5888, 6144]),
    "elm_1_1b": (expand([(16, 3), (20, 7), (24, 8), (28, 6), (32, 4)]),
                 [1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4608, 4608, 5120,
                  5376, 5632, 5888, 6144, 6400, 6656, 6912, 7168, 7424, 7680, 7936, 8192]),
    "elm_3b": (expand([(12, 4), (16, 14), (20, 12), (24, 6)]),
               [1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 4096, 4352, 4608, 4864, 5120, 5632, 5888, 6144,
                6400, 6656, 7168, 7424, 7680, 7936, 8192, 8704, 8960, 9216, 9472, 9728, 10240, 10496, 10752, 11008,
                11264, 11776, 12032, 12288]),
}


@pytest.mark.parametrize("name", sorted(SPEC_LAYERS))
def test_openelm_layer_dims_match_spec(name):
    heads, ffn = SPEC_LAYERS[name]
    dims = config_from_file(name).layer_dims()
    assert [d[0] for d in dims] == heads
    assert [d[1] for d in dims] == [h // 4 for h in heads]
    assert [d[2] for d in dims] == ffn
    with torch.device("meta"):
        model = Transformer(config_from_file(name))
    hd = model.config.head_dim
    for layer, (nq, nkv, f) in zip(model.layers, dims):  # the tensors take the per-layer shapes
        assert layer.attn.qkv_proj.weight.shape == ((nq + 2 * nkv) * hd, model.config.n_embd)
        assert layer.ffn.gate_up_proj.weight.shape == (2 * f, model.config.n_embd)


def test_per_layer_multipliers_mirror_numpy():
    # CoreNet/HF compute round(np.float64, 2) over np.linspace; our pure-Python version must agree exactly
    for L in range(2, 65):
        for lo, hi in [(0.5, 1.0), (0.5, 4.0), (0.25, 3.3)]:
            assert per_layer((lo, hi), L) == [float(np.round(x, 2)) for x in np.linspace(lo, hi, L)]
    assert per_layer(2.0, 3) == [2.0, 2.0, 2.0]
    assert per_layer([1, 2, 3], 3) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="n_layer=4"):
        per_layer([1, 2, 3], 4)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        ModelConfig(n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="both qkv_multipliers and ffn_multipliers"):
        ModelConfig(qkv_multipliers=(0.5, 1.0), head_dim=64)
    with pytest.raises(ValueError, match="backend"):
        ModelConfig(backend="cuda")
    with pytest.raises(ValueError, match="block_size"):
        build(tiny_llama(block_size=8))(torch.zeros(1, 9, dtype=torch.long))


# ----------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("make", [tiny_elm, tiny_llama])
def test_causality(make):
    model = build(make())
    idx = torch.randint(0, 97, (2, 20))
    changed = idx.clone()
    changed[:, 13] = (changed[:, 13] + 1) % 97
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :13], b[:, :13])
    assert not torch.allclose(a[:, 13:], b[:, 13:])


@pytest.mark.parametrize("make", [tiny_elm, tiny_llama])
@pytest.mark.parametrize("chunks", [[1] * 19, [5, 1, 7, 3, 1, 2], [19]])
def test_kv_cache_decoding_equals_full_forward(make, chunks):
    model = build(make())
    idx = torch.randint(0, 97, (2, sum(chunks)))
    full = model(idx)
    model.setup_cache(batch_size=2, max_len=32)
    out, t = [], 0
    for n in chunks:
        out.append(model(idx[:, t:t + n], input_pos=torch.arange(t, t + n)))
        t += n
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=1e-5)


def test_cache_rewind_overwrites_stale_slots():
    # decode 10 tokens, rewind to 6 and feed different tokens: the logits equal a fresh forward
    model = build(tiny_elm())
    idx = torch.randint(0, 97, (1, 10))
    alt = torch.randint(0, 97, (1, 4))
    model.setup_cache(1, 16)
    model(idx, input_pos=torch.arange(10))
    rewound = model(alt, input_pos=torch.arange(6, 10))
    fresh = model(torch.cat([idx[:, :6], alt], 1))[:, 6:]
    torch.testing.assert_close(rewound, fresh, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_equals_each_prompt_alone():
    model = build(tiny_llama())
    prompts = [torch.randint(0, 97, (n,)) for n in (9, 4, 6)]
    T = max(len(p) for p in prompts)
    idx = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, T - len(p):] = p
    left_pad = torch.tensor([T - len(p) for p in prompts])
    model.setup_cache(3, 16)
    logits = model(idx, input_pos=torch.arange(T), left_pad=left_pad)
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    step = model(nxt, input_pos=torch.tensor([T]), left_pad=left_pad)
    for i, p in enumerate(prompts):
        alone = model(torch.cat([p, nxt[i]]).unsqueeze(0))  # no input_pos: the cache is not used
        torch.testing.assert_close(logits[i, T - len(p):], alone[0, :-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[i, 0], alone[0, -1], atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = build(tiny_llama(n_head=6, n_kv_head=2))
    mha = build(tiny_llama(n_head=6, n_kv_head=6), seed=1)
    sd = gqa.state_dict()
    hd, group = gqa.config.dim_head, 3
    for i in range(gqa.config.n_layer):
        w = sd[f"layers.{i}.attn.qkv_proj.weight"]
        q, k, v = w.split([6 * hd, 2 * hd, 2 * hd])
        rep = lambda t: t.view(2, hd, -1).repeat_interleave(group, dim=0).reshape(6 * hd, -1)  # kv head h//3
        sd[f"layers.{i}.attn.qkv_proj.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    idx = torch.randint(0, 97, (2, 15))
    torch.testing.assert_close(gqa(idx), mha(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_elm, tiny_llama])
def test_sdpa_and_eager_backends_agree(make):
    a = build(make(backend="sdpa"))
    b = build(make(backend="eager"))
    idx = torch.randint(0, 97, (2, 21))
    torch.testing.assert_close(a(idx), b(idx), atol=1e-5, rtol=1e-5)
    a.setup_cache(2, 32), b.setup_cache(2, 32)
    pos = torch.arange(21)
    torch.testing.assert_close(a(idx, input_pos=pos), b(idx, input_pos=pos), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape,dtype,wdtype,eps", [
    ((7, 33), torch.float32, torch.float32, 1e-6),          # odd rows and width: the residual-stream norm
    ((2, 17, 5, 100), torch.bfloat16, torch.float32, 1e-6),  # QK-norm under autocast: bf16 heads, fp32 weight
    ((3, 9, 64), torch.float16, torch.float16, 1e-3),        # an eps that matters
])
@pytest.mark.parametrize("frozen", [False, True])
def test_rms_norm_torch_path_equals_eager(shape, dtype, wdtype, eps, frozen):
    """The CPU path (kernels.RMSNormTorch: LayerNorm's fused backward plus the centering term), and its forward
    without autograd: the eager reference's values bit for bit in the same dtype, and its gradients against the eager code in float64."""
    import kernels
    torch.manual_seed(0)
    qkv = (3 * torch.randn(*shape[:-1], 3 * shape[-1])).to(dtype)  # x is a strided slice, as q is of qkv
    x = qkv[..., : shape[-1]].requires_grad_()
    w = (1 + 0.5 * torch.randn(shape[-1])).to(wdtype).requires_grad_(not frozen)
    y = kernels.rms_norm(x, w, eps, backend="sdpa")
    assert torch.equal(y, kernels.rms_norm_eager(x, w, eps))
    with torch.no_grad():  # sampling and eval: the Function's forward alone (kernels.normalize), the same values
        assert torch.equal(kernels.rms_norm(x, w, eps), y)
    dy = torch.randn(y.shape).to(y.dtype)
    y.backward(dy)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_(not frozen)
    kernels.rms_norm_eager(xd, wd, eps).backward(dy.double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=tol * xd.grad.abs().max().item(), rtol=0)
    if frozen:
        assert w.grad is None
    else:
        torch.testing.assert_close(w.grad.double(), wd.grad, atol=4 * tol * wd.grad.abs().max().item(), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_torch_path_equals_eager(dtype):
    """kernels.RoPETorch: rope_eager's values bit for bit, and the gradient (the opposite rotation) against
    the eager code's autograd in float64; per-batch angles, as a left-padded batch has."""
    import kernels
    torch.manual_seed(0)
    B, T, H, D = 2, 11, 3, 20
    x = torch.randn(B, T, H, D).to(dtype).requires_grad_()
    angle = 10 * torch.randn(B, T, D // 2)
    cos, sin = angle.cos(), angle.sin()
    q, k = kernels.apply_rope(x, x[:, :, :1], cos, sin, backend="sdpa")
    assert torch.equal(q, kernels.rope_eager(x, cos, sin)) and torch.equal(k, kernels.rope_eager(x[:, :, :1], cos, sin))
    with torch.no_grad():  # sampling and eval: q and k rotated as one tensor, the same values
        q0, k0 = kernels.apply_rope(x, x[:, :, :1], cos, sin)
        assert torch.equal(q0, q) and torch.equal(k0, k)
    dq, dk = torch.randn(q.shape).to(dtype), torch.randn(k.shape).to(dtype)
    torch.autograd.backward([q, k], [dq, dk])
    xd = x.detach().double().requires_grad_()
    torch.autograd.backward([kernels.rope_eager(xd, cos, sin), kernels.rope_eager(xd[:, :, :1], cos, sin)],
                            [dq.double(), dk.double()])
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=tol * xd.grad.abs().max().item(), rtol=0)


@pytest.mark.parametrize("B,Hq,Hkv,Tq,Tk,causal", [
    (2, 4, 1, 17, 17, True),   # GQA 4, a training step's square causal attention
    (1, 6, 2, 5, 40, True),    # a chunk of queries against a longer cache: causal from the bottom right
    (1, 4, 4, 1, 30, True),    # one query (decoding)
    (2, 8, 2, 30, 7, False),   # non-causal, more queries than keys
    (2, 5, 1, 600, 600, True), # causal in blocks of queries (150 x 4), each against the keys it sees; GQA 5
    (1, 4, 2, 300, 300, True), # blocks of at least 128 queries: 128, 128 and 44
    (1, 2, 1, 200, 260, True), # blocks of a chunk against a longer cache
])
def test_attention_math_equals_eager(B, Hq, Hkv, Tq, Tk, causal):
    """kernels.attention_math: in float64 the eager reference's values and gradients to rounding; in bf16
    from the model's strided q/k/v views, within bf16's error of float64 (what CPU training runs)."""
    import kernels
    torch.manual_seed(0)
    qkv = torch.randn(B, max(Tq, Tk), Hq + 2 * Hkv, 16, dtype=torch.float64)
    q, k, v = (t.transpose(1, 2) for t in qkv.split([Hq, Hkv, Hkv], dim=2))  # (B, H, T, D) views, not contiguous
    q, k, v = q[:, :, :Tq].requires_grad_(), k[:, :, :Tk].requires_grad_(), v[:, :, :Tk].requires_grad_()
    dy = torch.randn(B, Hq, Tq, 16, dtype=torch.float64)
    got = kernels.attention_math(q, k, v, causal)
    grads = torch.autograd.grad(got, (q, k, v), dy)
    want = kernels.attention_eager(q, k, v, causal)
    want = (want, *torch.autograd.grad(want, (q, k, v), dy))
    for a, b in zip((got, *grads), want):
        torch.testing.assert_close(a, b, atol=1e-12 * b.abs().max().item(), rtol=0)
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    got = kernels.attention_math(*low, causal)
    grads = torch.autograd.grad(got, low, dy.bfloat16())
    assert got.dtype == torch.bfloat16
    for a, b in zip((got, *grads), want):
        torch.testing.assert_close(a.double(), b, atol=4e-2 * b.abs().max().item(), rtol=0)


def test_attention_math_is_finite_at_huge_scores():
    """A diverging run's attention (scores around 1e12, within fp32's range): attention_math's fp32 output
    and gradients stay finite and equal float64's to fp32 rounding (SDPA's CPU backward overflows to inf there,
    torch 2.13), so a run that blows up is stopped by its loss or gradient norm, not by the kernel."""
    import kernels
    torch.manual_seed(0)
    x = torch.randn(2, 300, 12, 8, dtype=torch.float64) * 1e6
    q, k, v = (t.transpose(1, 2) for t in x.split([8, 2, 2], dim=2))
    want = kernels.attention_eager(q, k, v, True)
    low = [t.float().requires_grad_() for t in (q, k, v)]
    got = kernels.attention_math(*low, True)
    got.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in low)
    torch.testing.assert_close(got.double(), want, atol=1e-5 * want.abs().max().item(), rtol=0)


def test_auto_attention_takes_the_math_form_where_it_pays(monkeypatch):
    """Training on a CPU, "auto" runs attention_math for bf16 attention (the inputs', or autocast's: fp32 q/k out
    of an fp32-weight QK-norm are cast, as SDPA's are) where the CPU multiplies bf16 natively, and for fp32 over
    at most MATH_MAX_KEYS_FP32 keys, each of at most MATH_MAX_SCORES scores; more scores or keys, explicit masks,
    queries with no key, no gradient, fp16, the "sdpa" backend and bf16 on a CPU without it take SDPA."""
    import kernels
    calls = []
    monkeypatch.setattr(kernels, "attention_math", lambda q, k, v, c: calls.append(q.dtype) or kernels.attention_sdpa(q, k, v, c))
    monkeypatch.setattr(kernels, "fast_cpu_bf16", lambda: True)
    monkeypatch.setattr(kernels, "MATH_MAX_SCORES", 4 * 16 * 64)  # qkv's 4 query heads
    monkeypatch.setattr(kernels, "MATH_MAX_KEYS_FP32", 32)
    bf, f32 = torch.bfloat16, torch.float32

    def qkv(Tq, Tk, dtype=bf):
        return (torch.randn(1, 4, Tq, 8, dtype=dtype, requires_grad=True), torch.randn(1, 2, Tk, 8, dtype=dtype),
                torch.randn(1, 2, Tk, 8, dtype=dtype))

    kernels.attention(*qkv(16, 16))
    kernels.attention(*qkv(16, 64))
    q, k, v = qkv(16, 16, f32)
    with torch.autocast("cpu", dtype=bf):
        assert kernels.attention(q, k, v.bfloat16()).dtype == bf
    assert calls == [bf] * 3
    kernels.attention(q, k, v)
    kernels.attention(*qkv(16, 32, f32))
    assert calls == [bf] * 3 + [f32] * 2
    with torch.no_grad():  # sampling and eval
        kernels.attention(*qkv(16, 16))
    kernels.attention(*qkv(16, 65))
    kernels.attention(*(t.repeat(2, 1, 1, 1) for t in qkv(16, 33)))  # the batch counts: 2 x 4 x 16 x 33 scores
    kernels.attention(*qkv(16, 33, f32))
    kernels.attention(*qkv(16, 16, torch.float16))
    kernels.attention(*qkv(16, 16), mask=torch.ones(16, 16, dtype=torch.bool))
    kernels.attention(*qkv(16, 8))  # causal, 8 queries without a key
    kernels.attention(*qkv(16, 16), backend="sdpa")
    kernels.attention(*(t.detach() for t in qkv(16, 16)))  # grad mode on, but no input needs a gradient
    assert kernels.attention(*qkv(0, 16)).shape[2] == 0  # no query at all
    with torch.autocast("cpu", dtype=bf):  # autocast casts fp32 only
        assert kernels.attention(*qkv(16, 16, torch.float64)).dtype == torch.float64
    monkeypatch.setattr(kernels, "fast_cpu_bf16", lambda: False)
    kernels.attention(*qkv(16, 16))
    assert len(calls) == 5
    kernels.attention(*qkv(16, 16, f32))  # fp32 does not need bf16 products
    assert len(calls) == 6


def test_auto_attention_compiles_without_a_graph_break():
    """Under torch.compile "auto" leaves the CPU's written-out attention to SDPA before asking anything Dynamo
    cannot trace (whether the CPU has bf16 products): bf16 training attention compiles as one graph."""
    import kernels
    torch._dynamo.reset()
    q = torch.randn(1, 4, 16, 8, requires_grad=True)
    k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.compile(lambda q, k, v: kernels.attention(q, k, v), backend="eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(got.double(), kernels.attention_eager(q.double(), k.double(), v.double()),
                               atol=4e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_torch_path_equals_autograd_of_the_formula(dtype, monkeypatch):
    """kernels.SwiGLUTorch (both halves' gradients written into one tensor, no cat): swiglu_eager's values
    and autograd's gradients through it, bit for bit; and it is what the sdpa backend runs with grad on."""
    import kernels
    torch.manual_seed(0)
    gate_up = (3 * torch.randn(2, 9, 2 * 13)).to(dtype).requires_grad_()
    y = kernels.swiglu(gate_up, backend="sdpa")
    assert type(y.grad_fn).__name__ == "SwiGLUTorchBackward"
    dy = torch.randn(y.shape).to(dtype)
    (got,) = torch.autograd.grad(y, gate_up, dy)
    want_y = kernels.swiglu_eager(gate_up)
    (want,) = torch.autograd.grad(want_y, gate_up, dy)
    assert torch.equal(y, want_y) and torch.equal(got, want)
    monkeypatch.setattr(kernels.SwiGLUTorch, "apply", None)  # decoding takes the formula: no Function to enter
    with torch.no_grad():
        assert torch.equal(kernels.swiglu(gate_up, backend="sdpa"), want_y)


def test_compiled_training_step_equals_eager():
    """Under torch.compile the loss, norms and RoPE trace their plain formulas (the kernel switch checks
    torch.compiler.is_compiling) instead of the hand-written Functions: same loss, same gradients, ignored
    targets and z-loss included."""
    model = build(tiny_elm(z_loss=1e-2, backend="sdpa"))
    model.train()
    idx, targets = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    targets[0, :5] = IGNORE_INDEX
    results = []
    for fn in (model, torch.compile(model, backend="aot_eager", fullgraph=True)):
        _, loss = fn(idx, targets)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_tied_embeddings_share_one_tensor():
    model = build(tiny_elm())
    assert "lm_head.weight" not in model.state_dict() and not hasattr(model, "lm_head")
    with torch.no_grad():
        model.tok_embeddings.weight[5].zero_()  # the output row of token 5 is the same tensor
    assert torch.all(model(torch.randint(0, 97, (1, 8)))[..., 5] == 0)
    untied = build(tiny_llama())
    assert untied.lm_head.weight.data_ptr() != untied.tok_embeddings.weight.data_ptr()


# ----------------------------------------------------------------------------- init, loss, optimizer

def test_init_statistics_follow_each_family():
    c = tiny_elm(n_embd=256, head_dim=32, n_layer=4, vocab_size=2000, ffn_dim_divisor=64)
    elm = build(c)
    d, L = c.n_embd, c.n_layer
    for name, p in elm.named_parameters():
        if p.dim() == 1:
            assert torch.all(p == 1), name
            continue
        if name.endswith(("out_proj.weight", "down_proj.weight")):
            want = d ** -0.5 * (2 * L) ** -0.5
        elif name == "tok_embeddings.weight":
            want = d ** -0.5
        else:
            want = p.shape[1] ** -0.5
        assert abs(p.std().item() / want - 1) < 0.05, name
    llama = build(tiny_llama(n_embd=240, n_head=4, n_kv_head=4, ffn_dim=512, vocab_size=2000))
    for name, p in llama.named_parameters():
        if p.dim() == 1:
            assert torch.all(p == 1), name
        else:
            assert abs(p.std().item() / 0.02 - 1) < 0.05, name


def test_meta_construction_then_init():
    with torch.device("meta"):
        model = Transformer(tiny_elm())
    model.to_empty(device="cpu")
    model.init_weights()
    ref = build(tiny_elm())
    for (n, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
        assert p.device.type == "cpu" and torch.isfinite(p).all()
        assert abs(p.std().item() - r.std().item()) < 0.2 * r.std().item() + 1e-6, n


def test_loss_z_loss_and_ignore_index():
    model = build(tiny_elm(z_loss=1e-2))
    idx = torch.randint(0, 97, (2, 12))
    targets = torch.randint(0, 97, (2, 12))
    targets[0, :5] = IGNORE_INDEX
    logits, loss = model(idx, targets)
    keep = targets.view(-1) != IGNORE_INDEX
    flat = logits.view(-1, 97)[keep]
    ce = torch.nn.functional.cross_entropy(flat, targets.view(-1)[keep])
    torch.testing.assert_close(loss, ce)  # eval mode: plain cross-entropy
    model.train()
    _, loss = model(idx, targets)
    torch.testing.assert_close(loss, ce + 1e-2 * torch.logsumexp(flat, -1).pow(2).mean())


@pytest.mark.parametrize("z_loss", [0.0, 0.3])
@pytest.mark.parametrize("backend,rows", [("sdpa", None), ("sdpa", 4), ("eager", None)])
def test_cross_entropy_gradient_equals_autograd_of_the_formula(z_loss, backend, rows, monkeypatch):
    """kernels.cross_entropy: the blocked CrossEntropy Function ("sdpa", as "auto" and "triton") and the plain
    formula ("eager", as under torch.compile) against F.cross_entropy in float64, gradients included."""
    import kernels
    from kernels.torch_ops import CrossEntropy
    if rows:  # blocks of 4 rows, the last one partial, as a real vocabulary's logits are cut
        monkeypatch.setattr(CrossEntropy, "blocks", staticmethod(lambda x: [slice(i, i + rows) for i in range(0, len(x), rows)]))
    torch.manual_seed(0)
    logits = (torch.randn(13, 11, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(0, 11, (13,))
    targets[[2, 7]] = IGNORE_INDEX
    keep = targets != IGNORE_INDEX
    lse = torch.logsumexp(logits[keep], -1)
    want = torch.nn.functional.cross_entropy(logits[keep], targets[keep]) + z_loss * lse.pow(2).mean()
    (want_grad,) = torch.autograd.grad(want, logits)
    before = logits.detach().clone()
    got = kernels.cross_entropy(logits, targets, z_loss, backend=backend)
    assert (type(got.grad_fn).__name__ == "CrossEntropyBackward") == (backend != "eager")  # which one ran
    (got_grad,) = torch.autograd.grad(got * 3.0, logits)  # backward scales the gradient forward made
    assert torch.equal(logits, before)  # the in-place exp_/mul_ work on the gradient's storage, never the logits
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, 3.0 * want_grad)
    assert torch.all(got_grad[[2, 7]] == 0)  # ignored positions get no gradient
    everything_ignored = torch.full((13,), IGNORE_INDEX)
    assert kernels.cross_entropy(logits, everything_ignored, z_loss, backend=backend).item() == 0.0  # not NaN


def test_cross_entropy_fp16_gradient_survives_the_loss_scale():
    """The loss's gradient is made in forward, before backward brings GradScaler's factor: in fp16 it is kept in
    fp32 until then, so the small softmax terms are scaled into fp16's range instead of flushed to zero first."""
    import kernels
    torch.manual_seed(0)
    logits = (torch.randn(256, 1000, dtype=torch.float64) * 3)
    targets = torch.randint(0, 1000, (256,))
    scale = 2.0 ** 16
    x = logits.clone().requires_grad_()
    (torch.nn.functional.cross_entropy(x, targets) * scale).backward()
    want = x.grad.half()
    h = logits.half().requires_grad_()
    (kernels.cross_entropy(h, targets, backend="sdpa") * scale).backward()
    assert h.grad.dtype == torch.float16
    assert (h.grad != 0).sum() >= 0.999 * (want != 0).sum()  # unscaled fp16 flushes ~40% of them to zero
    torch.testing.assert_close(h.grad.float(), want.float(), rtol=2e-2, atol=1e-3)


def test_cross_entropy_bf16_gradient_over_blocks_is_within_a_bf16_step(monkeypatch):
    """bf16 logits (the path that converts each block's fp32 gradient into the bf16 one), several blocks, a
    backward factor other than 1: the gradient rounded in forward and scaled in backward stays within one bf16
    step (2^-7 relative) of the float64 formula's."""
    import kernels
    from kernels.torch_ops import CrossEntropy
    monkeypatch.setattr(CrossEntropy, "blocks", staticmethod(lambda x: [slice(i, i + 5) for i in range(0, len(x), 5)]))
    torch.manual_seed(0)
    logits = (3 * torch.randn(23, 64)).bfloat16()
    targets = torch.randint(0, 64, (23,))
    targets[[3, 11]] = IGNORE_INDEX
    x = logits.double().requires_grad_()
    keep = targets != IGNORE_INDEX
    lse = torch.logsumexp(x[keep], -1)
    want = torch.nn.functional.cross_entropy(x[keep], targets[keep]) + 1e-2 * lse.pow(2).mean()
    (want_grad,) = torch.autograd.grad(want * 0.37, x)
    b = logits.clone().requires_grad_()
    got = kernels.cross_entropy(b, targets, 1e-2, backend="sdpa")
    (got_grad,) = torch.autograd.grad(got * 0.37, b)
    assert got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-6, atol=0)  # the loss itself in fp32
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=2 ** -7, atol=1e-6 * want_grad.abs().max().item())


def test_cross_entropy_backward_runs_once_and_no_gradient_without_grad_mode(monkeypatch):
    """The gradient made in forward is scaled in place: a second backward through the same graph is refused
    rather than scaled twice. With grad mode off no gradient buffer is made, and the loss is the same."""
    import kernels
    logits = torch.randn(6, 11, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    loss = kernels.cross_entropy(logits, targets, backend="sdpa")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()
    made = []
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: made.append(t.shape) or empty_like(t, **kw))
    with torch.no_grad():
        assert kernels.cross_entropy(logits, targets, backend="sdpa").item() == loss.item()
    assert made == []
    kernels.cross_entropy(logits, targets, backend="sdpa")
    assert made == [logits.shape]  # the gradient buffer, with grad mode on


def test_optimizer_weight_decay_groups():
    model = build(tiny_elm())
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), exclude_1d=True)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.tok_embeddings.weight for p in decay["params"])  # embeddings are decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), exclude_1d=False)  # EasyLM: decay everything
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    assert opt.defaults["fused"]  # one fused kernel on a CPU too (train.py's optimizer): 4-5x faster than foreach


@pytest.mark.parametrize("make", [tiny_llama, tiny_elm])
def test_flops_per_token_is_what_a_training_step_multiplies(make):
    """An independent count: torch's FlopCounterMode over one forward and backward of the eager model (attention as
    plain matmuls over the full T x T, as the formula counts it)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build(make(backend="eager")).train()
    idx = torch.randint(0, 97, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    assert model.flops_per_token(32) * 2 * 32 == counter.get_total_flops()


def test_flops_and_mfu():
    model = build(tiny_llama())
    want = model.flops_per_token(32)
    assert model.estimate_mfu(1000.0, 32, device_name="NVIDIA H100 80GB HBM3") == pytest.approx(want * 1000 / 989e12)
    assert model.estimate_mfu(1000.0, 32, device_name="NVIDIA A100-SXM4-80GB") == pytest.approx(want * 1000 / 312e12)
    assert model.estimate_mfu(1000.0, 32, device_name="cpu") is None
    assert model.estimate_mfu(1000.0, 32, peak_flops=1e12) == pytest.approx(want * 1000 / 1e12)


def test_every_config_file_builds():
    names = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))]
    assert {"elm_tiny", "llama_tiny", "elm_270m", "open_llama_13b"} <= set(names)
    for name in names:
        if name.startswith(("finetune",)):
            continue
        with torch.device("meta"):
            Transformer(config_from_file(name))
    assert 8e6 < build(config_from_file("elm_tiny")).num_params() < 14e6


# ----------------------------------------------------------------------------- configurator

def test_configurator_applies_file_and_overrides(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("lr = 0.5\nname = 'from_file'\n")
    scope = {"lr": 0.1, "steps": 10, "name": "x", "betas": (0.9, 0.95), "flag": True, "__file__": "t.py"}
    out = configurator.configure(scope, [str(cfg), "--steps=20", "--name=123", "--betas=(0.8,0.9)", "--flag=False"])
    assert scope["lr"] == 0.5 and scope["steps"] == 20 and scope["name"] == "123"
    assert scope["betas"] == (0.8, 0.9) and scope["flag"] is False and out["steps"] == 20
    configurator.configure(scope, ["--lr=1"])  # an int where a float is expected widens
    assert scope["lr"] == 1.0 and isinstance(scope["lr"], float)
    configurator.configure(scope, ["--name=~/runs/a"])  # the shell leaves a ~ after = alone; we expand it
    assert scope["name"] == os.path.join(os.path.expanduser("~"), "runs", "a")
    assert configurator.torch_dtype("bfloat16") is torch.bfloat16 and configurator.torch_dtype(torch.half) is torch.half
    assert configurator.torch_dtype("auto", auto=torch.float32) is torch.float32
    with pytest.raises(configurator.InputError, match=r"dtype='bf16': use float32 or bfloat16 or float16"):
        configurator.torch_dtype("bf16")
    with pytest.raises(configurator.InputError, match=r"dtype='auto': use float32"):  # auto only where it means something
        configurator.torch_dtype("auto")


@pytest.mark.parametrize("argv, message", [
    (["--stepz=3"], "unknown setting 'stepz'"),
    (["--steps=3.5"], "steps takes an integer"),
    (["--steps=True"], "steps takes an integer"),
    (["--flag=3"], "flag takes True or False"),
    (["--steps"], "malformed argument"),
    (["nonsense"], "neither a config file"),
    (["missing.py"], "cannot read config file"),
])
def test_configurator_refuses_bad_input(argv, message):
    scope = {"steps": 10, "flag": True, "__file__": "t.py"}
    with pytest.raises(InputError, match=message):
        configurator.configure(scope, argv)


def test_configurator_refuses_unknown_key_in_file(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("n_layre = 4\n")
    with pytest.raises(InputError, match="unknown key 'n_layre'"):
        configurator.configure({"n_layer": 2}, [str(cfg)])


def test_configurator_error_is_one_line_without_traceback(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\nimport configurator\nsteps = 1\n"
                      "configurator.main(configurator.configure, globals(), sys.argv[1:])\n")
    r = subprocess.run([sys.executable, str(script), "--steps=x"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and "steps" in r.stderr
    # a bug is not an InputError: it keeps its traceback
    script.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\nimport configurator\n"
                      "configurator.main(lambda: [][1])\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "IndexError" in r.stderr
    # Ctrl-C: one line and the shell's status for SIGINT, not the traceback of wherever it landed
    script.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\nimport configurator\n"
                      "def f():\n    raise KeyboardInterrupt\nconfigurator.main(f)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert r.returncode == 130 and r.stderr.strip() == "interrupted"
    # a full disk, wherever it is met: one line naming the file (other OSErrors are bugs and keep their traceback)
    script.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\nimport configurator, errno\n"
                      "def f():\n    raise OSError(errno.ENOSPC, 'No space left on device', '/d/x.bin')\n"
                      "configurator.main(f)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == ("error: no space left on the device writing /d/x.bin: free some, "
                                                      "or write elsewhere")


def test_triton_backend_without_a_gpu_is_refused(monkeypatch):
    import train
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    s = train.settings_for([], {})
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA GPU"):
        train.check({**s, "backend": "triton"})


# ----------------------------------------------------------------------------- an independent reference

def reference_logits(model, idx):
    """The forward pass of CoreNet / modeling_llama written out plainly in float64 for one sequence: per-head loops, RoPE as
    complex rotation of the pairs (x[r], x[r + D/2]), explicit GQA head mapping h -> h // group."""
    c, T = model.config, idx.shape[0]
    sd = {k: v.double() for k, v in model.state_dict().items()}
    hd = c.dim_head

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * w

    theta = c.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.arange(T)[:, None] * theta)

    def rope(x):  # (T, H, hd)
        z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * rot[:, None, :]
        return torch.cat([z.real, z.imag], -1)

    future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    x = sd["tok_embeddings.weight"][idx]
    for i, (nq, nkv, f) in enumerate(c.layer_dims()):
        p = f"layers.{i}."
        qkv = rms(x, sd[p + "attn_norm.weight"]) @ sd[p + "attn.qkv_proj.weight"].T
        q = qkv[:, : nq * hd].reshape(T, nq, hd)
        k = qkv[:, nq * hd:(nq + nkv) * hd].reshape(T, nkv, hd)
        v = qkv[:, (nq + nkv) * hd:].reshape(T, nkv, hd)
        if c.qk_norm:
            q, k = rms(q, sd[p + "attn.q_norm.weight"]), rms(k, sd[p + "attn.k_norm.weight"])
        q, k = rope(q), rope(k)
        heads = []
        for h in range(nq):
            kv = h // (nq // nkv)
            s = (q[:, h] @ k[:, kv].T / math.sqrt(hd)).masked_fill(future, float("-inf"))
            heads.append(torch.softmax(s, -1) @ v[:, kv])
        x = x + torch.cat(heads, -1) @ sd[p + "attn.out_proj.weight"].T
        gu = rms(x, sd[p + "ffn_norm.weight"]) @ sd[p + "ffn.gate_up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gu[:, :f]) * gu[:, f:]) @ sd[p + "ffn.down_proj.weight"].T
    x = rms(x, sd["norm.weight"])
    return x @ (sd["tok_embeddings.weight"] if c.tie_embeddings else sd["lm_head.weight"]).T


@pytest.mark.parametrize("make", [tiny_elm, tiny_llama])
def test_forward_equals_plain_reference(make):
    model = build(make())
    with torch.no_grad():  # non-trivial norm weights, so a misplaced or missing norm shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    idx = torch.randint(0, 97, (23,))
    torch.testing.assert_close(model(idx[None])[0].double(), reference_logits(model, idx), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_attention_chunk_is_aligned_bottom_right(backend):
    # the last Tq queries against all Tk keys are the last Tq rows of full causal attention
    import kernels
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 11, 16), torch.randn(2, 2, 11, 16), torch.randn(2, 2, 11, 16)
    full = kernels.attention(q, k, v, causal=True, backend=backend)
    for Tq in (1, 3, 10):
        part = kernels.attention(q[:, :, -Tq:], k, v, causal=True, backend=backend)
        torch.testing.assert_close(part, full[:, :, -Tq:], atol=1e-6, rtol=1e-5)


def test_rms_norm_matches_transformers_bit_for_bit_in_bf16():
    # normalise in fp32, cast to the input dtype, then scale: HF LlamaRMSNorm.forward's order
    import kernels
    LlamaRMSNorm = pytest.importorskip("transformers.models.llama.modeling_llama").LlamaRMSNorm
    torch.manual_seed(0)
    ref = LlamaRMSNorm(64, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    x = (torch.randn(5, 7, 64) * 3).to(torch.bfloat16)
    assert torch.equal(kernels.rms_norm(x, ref.weight, 1e-6, backend="eager"), ref(x))
