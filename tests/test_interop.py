# Our exports read by the implementations users move them to, none of them written here: mlx-lm (its openelm.py and
# llama.py) and transformers' LlamaForCausalLM. Same logits (fp32) and the same greedy tokens. Skipped where the
# package is not installed (mlx's CPU wheels exist for Linux x86-64; macOS and Windows get other builds).
import numpy as np
import pytest
import torch

import hf
import sample
from model import ModelConfig, Transformer
from tokenizer import Tokenizer

ELM = dict(vocab_size=300, block_size=64, n_layer=4, n_embd=64, head_dim=16, qkv_multipliers=(0.5, 1.0),
           ffn_multipliers=(0.5, 4.0), num_gqa_groups=2, ffn_dim_divisor=32, qk_norm=True, tie_embeddings=True,
           init="corenet")
LLAMA = dict(vocab_size=300, block_size=64, n_layer=3, n_embd=96, n_head=8, n_kv_head=2, ffn_dim=160, norm_eps=1e-5,
             rope_theta=50000.0, init_std=0.1)
PROMPT = [1, 17, 250, 33, 99, 5, 140, 7]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm
    d = tmp_path_factory.mktemp("sp")
    text = open(sample.__file__).read().splitlines()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(d / "sp"), vocab_size=300,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    return d / "sp.model"


def exported(tmp_path, arch, sp_model, **kw):
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(**{**arch, **kw})).eval()
    with torch.no_grad():  # norm weights of 1 would hide a swapped or missing norm
        for p in ours.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    hf.save_model(ours, tmp_path / "export", tokenizer=sp_model)
    return ours, tmp_path / "export"


def greedy_ours(model, n=8):
    return sample.generate(model, torch.tensor([PROMPT]), n, greedy=True)[0, len(PROMPT):].tolist()


@pytest.mark.parametrize("arch", ["openelm", "openelm_untied", "llama"])
def test_mlx_lm_reads_our_exports(tmp_path, sp_model, arch):
    mx = pytest.importorskip("mlx.core")
    mlx_lm = pytest.importorskip("mlx_lm")
    kw = {"tie_embeddings": False} if arch == "openelm_untied" else {}
    ours, path = exported(tmp_path, LLAMA if arch == "llama" else ELM, sp_model, **kw)
    theirs, tok = mlx_lm.load(str(path))
    assert tok.encode("def f(x):") == sp_ids(sp_model, "def f(x):")
    with torch.no_grad():
        want = ours(torch.tensor([PROMPT]))[0].numpy()
    got = np.array(theirs(mx.array([PROMPT]))[0].astype(mx.float32))
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), np.abs(got - want).max()
    seq = list(PROMPT)
    for _ in range(8):  # greedy, a full forward per token: nothing of mlx-lm's sampling API is assumed
        seq.append(int(np.array(theirs(mx.array([seq]))[0, -1].astype(mx.float32)).argmax()))
    assert seq[len(PROMPT):] == greedy_ours(ours)


def sp_ids(sp_model, text):
    return Tokenizer(sp_model).encode(text, bos=True)


def test_transformers_reads_our_llama_export_and_we_read_theirs(tmp_path, sp_model):
    transformers = pytest.importorskip("transformers")
    ours, path = exported(tmp_path, LLAMA, sp_model)
    theirs = transformers.LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = ours(torch.tensor([PROMPT]))[0], theirs(torch.tensor([PROMPT])).logits[0]
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max())
    out = theirs.generate(torch.tensor([PROMPT]), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out[0, len(PROMPT):].tolist() == greedy_ours(ours)
    theirs.save_pretrained(tmp_path / "back")  # and their save comes back as the same model
    back = hf.load_model(tmp_path / "back")
    with torch.no_grad():
        assert torch.equal(back(torch.tensor([PROMPT]))[0], ours(torch.tensor([PROMPT]))[0])
    # the exported tokenizer loads without a prompt to run custom code (no auto_map) and gives our ids
    assert transformers.AutoTokenizer.from_pretrained(path)("def f(x):")["input_ids"] == sp_ids(sp_model, "def f(x):")
