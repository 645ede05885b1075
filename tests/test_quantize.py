# quantize.py: fp32 linear layers as batched matrix-vector products (the CPU decode default) give the same products
# and leave the model as it was; weight-only int8 stays close to fp32.
import pytest
import torch

import quantize
import sample
from model import ModelConfig, Transformer

CFG = dict(vocab_size=97, block_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=96, init_std=0.1)
pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="gemv is for MKL builds")


def model(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**CFG, **kw})).eval()


@pytest.mark.parametrize("tied,vocab", [(False, 96), (True, 96), (False, 97)])
def test_gemv_gives_the_same_products_and_leaves_the_model_as_it_was(tied, vocab, monkeypatch):
    m = model(tie_embeddings=tied, vocab_size=vocab)
    calls = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or bmm(*a))
    with torch.no_grad():
        for idx in (torch.randint(0, 96, (1, 1)), torch.randint(0, 96, (2, 5)), torch.randint(0, 96, (2, 9))):
            plain = m(idx)
            calls.clear()
            with quantize.gemv(m):
                assert all("forward" in l.__dict__ for l in m.modules() if isinstance(l, torch.nn.Linear))
                got = m(idx)
            # a decode step's rows (1, or 10 <= max_rows) as batched products: 4 per layer and the head's (a head
            # of 97 rows, a prime, has no blocks: F.linear); more rows (18) through F.linear
            want = 4 * len(m.layers) + (vocab % 2 == 0)
            assert len(calls) == (0 if idx.numel() > 16 else want), (idx.shape, len(calls))
            torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
    assert not any("forward" in l.__dict__ for l in m.modules()) and "head" not in m.__dict__  # restored
    m.train()(idx, idx)[1].backward()  # training sees plain modules
    assert m.tok_embeddings.weight.grad is not None
    with torch.no_grad():  # the weights are viewed, not copied: a weight changed in place is what gemv uses
        m.eval()
        with quantize.gemv(m):
            before = m(idx[:1, :1])
            m.layers[0].ffn.down_proj.weight.mul_(2)
            after = m(idx[:1, :1])
        torch.testing.assert_close(after, m(idx[:1, :1]), rtol=1e-5, atol=1e-5 * after.abs().max().item())
    assert not torch.allclose(before, after)


def test_gemv_only_where_it_pays():
    m = model()
    with torch.no_grad():
        assert quantize.gemv_pays(m)
        assert not quantize.gemv_pays(model().to(torch.bfloat16)) and not quantize.gemv_pays(model().double())
    assert not quantize.gemv_pays(m)  # gradients wanted: the modules must stay as they are
    with quantize.gemv(m):
        assert not any("forward" in l.__dict__ for l in m.modules())
    m = model(vocab_size=96)  # a weight stored transposed (not contiguous): its blocks are strided views, still right
    m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().t().contiguous().t())
    idx = torch.randint(0, 96, (1, 1))
    with torch.no_grad():
        plain = m(idx)
        with quantize.gemv(m):
            got = m(idx)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def test_generate_uses_gemv_by_itself_and_decodes_the_same_tokens(monkeypatch):
    m, prompt = model(tie_embeddings=True, vocab_size=96), torch.randint(3, 96, (1, 7))
    calls, bmm = [], torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or bmm(*a))
    fast = sample.generate(m, prompt, 20, greedy=True)
    assert len(calls) == 20 * (4 * len(m.layers) + 1)  # the 7-row prefill and 19 steps, the tied head included
    calls.clear()
    with torch.no_grad(), quantize.gemv(m):  # a block inside another, and a draft that is the target itself
        assert torch.equal(sample.generate(m, prompt, 20, greedy=True, assistant_model=m), fast)
    assert calls and not any("forward" in l.__dict__ for l in m.modules()) and "head" not in m.__dict__
    monkeypatch.setattr(quantize, "gemv_pays", lambda model: False)
    calls.clear()
    assert torch.equal(sample.generate(m, prompt, 20, greedy=True), fast) and not calls


def test_int8_weights_stay_close_to_fp32():
    m, idx = model(), torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        want = m(idx)
        q = quantize.int8(model())
        got = q(idx)
    assert all(not isinstance(x, torch.nn.Linear) for x in q.modules())
    assert isinstance(q.lm_head, quantize.Int8Linear) and q.lm_head.q.dtype == torch.int8
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert 0 < err < 5e-2, err  # int8 weights and bf16 activations in the matmuls: not exact, not far
    out = sample.generate(q, idx[:1], 8, greedy=True)
    assert out.shape == (1, 17)
