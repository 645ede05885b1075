# quantize.py: MKL-packed fp32 weights (the CPU decode default) give the same products and leave the model as it
# was; weight-only int8 stays close to fp32.
import pytest
import torch

import quantize
import sample
from model import ModelConfig, Transformer

CFG = dict(vocab_size=97, block_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=96, init_std=0.1)
pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="packing needs MKL")


def model(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**CFG, **kw})).eval()


def test_packed_weights_give_the_same_model_and_leave_it_as_it_was():
    m, idx = model(), torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        plain = m(idx)
        with quantize.packed(m):
            assert all("forward" in l.__dict__ for l in m.modules() if isinstance(l, torch.nn.Linear))
            got = m(idx)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
    assert not any("forward" in l.__dict__ for l in m.modules())  # restored: training sees plain nn.Linear
    m.train()(idx, idx)[1].backward()
    assert m.lm_head.weight.grad is not None
    with torch.no_grad():  # a weight changed in place is packed again, not served stale
        m.eval().lm_head.weight.mul_(2)
        doubled = m(idx)
        with quantize.packed(m):
            again = m(idx)
    assert not torch.allclose(doubled, plain)
    torch.testing.assert_close(again, doubled, rtol=1e-5, atol=1e-5 * doubled.abs().max().item())


def test_packing_only_where_it_pays():
    m = model()
    with torch.no_grad():
        assert quantize.can_pack(m)
        assert not quantize.can_pack(model().to(torch.bfloat16)) and not quantize.can_pack(model().double())
    assert not quantize.can_pack(m)  # gradients wanted: the modules must stay differentiable


def test_generate_packs_by_itself_and_decodes_the_same_tokens(monkeypatch):
    m, prompt = model(), torch.randint(3, 97, (1, 7))
    packed = sample.generate(m, prompt, 20, greedy=True)
    monkeypatch.setattr(quantize, "can_pack", lambda model: False)
    assert torch.equal(sample.generate(m, prompt, 20, greedy=True), packed)


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
