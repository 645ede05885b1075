"""weight_diff.py: make + recover is bit-exact (fixups included) for Hugging Face directories (bf16, fp32, sharded,
.bin) and our checkpoints; a wrong base or a damaged diff is refused and leaves nothing; the streaming writer
writes files safetensors reads back."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import checkpoint
import hf
import weight_diff as wd
from model import ModelConfig, Transformer
from configurator import InputError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = dict(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_dim=64, block_size=32)
ELM = dict(vocab_size=64, n_layer=2, n_embd=32, qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0), num_gqa_groups=2,
           qk_norm=True, tie_embeddings=True, head_dim=8, ffn_dim_divisor=8, block_size=32, init="corenet")
# the first four embedding entries: base -> tuned. 1 -> 1e-30 and 1 -> -0.0 lose the tuned value in any precision
# (the diff rounds to -1 and base + diff to +0); 1e38 -> -3e38 overflows float32, so only bf16 needs a fixup there;
# 0.5 -> -0.25 changes sign and is exact
BASE_VALUES, TUNED_VALUES = [1.0, 1.0, 1e38, 0.5], [1e-30, -0.0, -3e38, -0.25]
FIXED = {torch.bfloat16: [0, 1, 2], torch.float32: [0, 1]}  # flat indices that must come back through fixups
IDX = torch.tensor([[1, 5, 9, 63, 0, 2, 33], [7, 7, 7, 1, 2, 3, 4]])


def pair(cfg, seed=0):
    """(base, tuned): a random model and a perturbed copy with the adversarial elements above."""
    torch.manual_seed(seed)
    base = Transformer(ModelConfig(**cfg)).eval()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
        base.tok_embeddings.weight[0, :4] = torch.tensor(BASE_VALUES)
        tuned.tok_embeddings.weight[0, :4] = torch.tensor(TUNED_VALUES)
        tuned.tok_embeddings.weight[1, :] = base.tok_embeddings.weight[1, :]  # unchanged rows: a zero diff
    return base, tuned


def hf_tensors(path):
    """{name: tensor} of every safetensors file of a directory, read back by the safetensors library."""
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors") and f != wd.FIXUPS:
            with safe_open(os.path.join(path, f), framework="pt") as s:
                out.update({k: s.get_tensor(k) for k in s.keys()})
    return out


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(wd.bits(a), wd.bits(b))


def logits(model):
    with torch.no_grad():
        return model(IDX).float()


# ----------------------------------------------------------------------------- the writer

def test_streaming_writer_reads_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    ts = {"bf16": torch.randn(3, 5, generator=g).bfloat16(), "f32": torch.randn(7, generator=g),
          "f64": torch.randn(2, 2, 2, generator=g).double(), "f16": torch.randn(1, 3, generator=g).half(),
          "i64": torch.tensor([-(2 ** 62), 5, 2 ** 62]), "i32": torch.tensor([[1, -2]], dtype=torch.int32),
          "bool": torch.tensor([True, False, True]), "u8": torch.arange(5, dtype=torch.uint8),
          "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "strided": torch.randn(4, 6, generator=g).t()}
    f = str(tmp_path / "x.safetensors")
    wd.write_safetensors(f, [(k, v.dtype, tuple(v.shape)) for k, v in ts.items()], iter(ts.values()), {"note": "hi"})
    with safe_open(f, framework="pt") as s:
        assert list(s.keys()) == sorted(ts) and s.metadata() == {"format": "pt", "note": "hi"}
        for k, v in ts.items():
            assert same_bits(s.get_tensor(k), v.contiguous()), k
    assert (8 + int.from_bytes(open(f, "rb").read(8), "little")) % 8 == 0  # the data starts 8-byte aligned
    assert not os.path.exists(f + ".tmp")
    # a tensor that does not match its header entry (or a missing one) is refused, and the file is not renamed
    with pytest.raises(ValueError, match="the header says"):
        wd.write_safetensors(str(tmp_path / "y.safetensors"), [("a", torch.float32, (2,))], [torch.zeros(3)])
    with pytest.raises(ValueError):
        wd.write_safetensors(str(tmp_path / "y.safetensors"), [("a", torch.float32, (2,)), ("b", torch.float32, (1,))],
                             [torch.zeros(2)])
    assert not os.path.exists(tmp_path / "y.safetensors")


def test_wider_diff_alone_is_not_enough_hence_fixups():
    """The premise: without fixups, base + diff misses exactly the adversarial elements; with them it is exact."""
    for dtype, fixed in FIXED.items():
        b, t = torch.tensor(BASE_VALUES, dtype=dtype), torch.tensor(TUNED_VALUES, dtype=dtype)
        d = t.to(wd.wide(dtype)) - b.to(wd.wide(dtype))
        miss = (wd.bits(wd.add_diff(b, d, dtype)) != wd.bits(t)).nonzero().flatten().tolist()
        assert miss == fixed, dtype
        assert same_bits(wd.add_diff(b, d, dtype, torch.tensor(miss), t[miss]), t)
        naive = (t - b) + b  # the same-precision diff others ship
        assert not torch.equal(wd.bits(naive), wd.bits(t))


def test_integer_tensors_diff_in_int64_exactly():
    """Integer buffers are diffed in int64: wrapping around (int64's extremes) and back is still exact."""
    cases = [([2 ** 63 - 1, -2 ** 63, 5], [-2 ** 63, 2 ** 63 - 1, -7], torch.int64), ([0, 255, 7], [255, 0, 7], torch.uint8),
             ([True, False, True], [False, True, True], torch.bool), ([-2 ** 31, 3], [2 ** 31 - 1, -3], torch.int32)]
    for b, t, dtype in cases:
        b, t = torch.tensor(b, dtype=dtype), torch.tensor(t, dtype=dtype)
        assert wd.wide(dtype) == torch.int64
        d = t.to(torch.int64) - b.to(torch.int64)
        assert same_bits(wd.add_diff(b, d, dtype), t), dtype


# ----------------------------------------------------------------------------- Hugging Face directories

@pytest.mark.parametrize("cfg", [LLAMA, ELM], ids=["llama", "openelm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_hf_round_trip_is_bit_exact(tmp_path, cfg, dtype, capsys):
    base, tuned = pair(cfg)
    hf.save_model(base, tmp_path / "base", dtype=dtype)
    hf.save_model(tuned, tmp_path / "tuned", dtype=dtype)
    (tmp_path / "tuned" / "generation_config.json").write_text('{"max_length": 32}')
    total = wd.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "diff"))
    assert total in capsys.readouterr().out
    info = json.loads((tmp_path / "diff" / "weight_diff.json").read_text())
    want = hf_tensors(tmp_path / "tuned")
    assert info["tuned_checksum"] == total == wd.checksum({k: wd.sha256(v) for k, v in want.items()})
    assert info["kind"] == "hf" and info["base_format"] == "safetensors"
    # the fixups hold exactly the adversarial elements, and nothing else anywhere
    emb = "transformer.token_embeddings.weight" if cfg is ELM else "model.embed_tokens.weight"
    with safe_open(str(tmp_path / "diff" / wd.FIXUPS), framework="pt") as s:
        assert sorted(s.keys()) == [emb + ".__fixup_index", emb + ".__fixup_value"]
        assert s.get_tensor(emb + ".__fixup_index").tolist() == FIXED[dtype]
    assert info["fixup_elements"] == len(FIXED[dtype])
    # the diff is a model directory in the tuned names, one precision wider, with the tuned dir's other files
    diffs = hf_tensors(tmp_path / "diff")
    assert set(diffs) == set(want) and all(d.dtype == wd.wide(dtype) for d in diffs.values())
    assert json.loads((tmp_path / "diff" / "config.json").read_text()) == json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert hf.load_model(tmp_path / "diff", dtype=torch.float32).config == hf.load_config(tmp_path / "tuned")

    wd.recover(str(tmp_path / "base"), str(tmp_path / "diff"), str(tmp_path / "rec"))
    assert f"recovered {len(want)} tensors, checksum {total} matches" in capsys.readouterr().out
    got = hf_tensors(tmp_path / "rec")
    assert set(got) == set(want) and all(same_bits(got[k], want[k]) for k in want)
    assert sorted(os.listdir(tmp_path / "rec")) == ["config.json", "generation_config.json", "model.safetensors"]
    assert torch.equal(logits(hf.load_model(tmp_path / "rec")), logits(hf.load_model(tmp_path / "tuned")))


def to_bin(path):
    """A one-file Hugging Face directory turned into the older pytorch_model.bin format."""
    sd = hf_tensors(path)
    os.remove(path / "model.safetensors")
    torch.save(sd, path / "pytorch_model.bin")


def test_sharded_tuned_and_bin_base(tmp_path):
    """Tuned in several safetensors shards, base as one pytorch_model.bin: the output keeps the tuned sharding.
    A tuned pytorch_model.bin comes back as model.safetensors with the same tensors."""
    base, tuned = pair(LLAMA, seed=3)
    hf.save_model(base, tmp_path / "base", dtype=torch.bfloat16)
    to_bin(tmp_path / "base")
    hf.save_model(tuned, tmp_path / "tuned", dtype=torch.bfloat16, max_shard_size=20_000)
    shards = sorted(f for f in os.listdir(tmp_path / "tuned") if f.endswith(".safetensors"))
    assert len(shards) > 2
    wd.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "diff"))
    info = json.loads((tmp_path / "diff" / "weight_diff.json").read_text())
    assert info["base_format"] == "pytorch_model.bin" and info["tuned_format"] == "safetensors"
    wd.recover(str(tmp_path / "base"), str(tmp_path / "diff"), str(tmp_path / "rec"))
    index = lambda d: json.loads((tmp_path / d / "model.safetensors.index.json").read_text())["weight_map"]
    assert index("rec") == index("tuned") == index("diff")
    for f in shards:  # file by file: each tensor landed in the shard the tuned model has it in
        with safe_open(str(tmp_path / "tuned" / f), framework="pt") as a, safe_open(str(tmp_path / "rec" / f), framework="pt") as b:
            assert list(a.keys()) == list(b.keys()) and all(same_bits(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    rec = json.loads((tmp_path / "rec" / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert rec == sum(t.numel() * 2 for t in hf_tensors(tmp_path / "tuned").values())
    assert torch.equal(logits(hf.load_model(tmp_path / "rec")), logits(tuned.bfloat16()))
    hf.save_model(tuned, tmp_path / "tuned_bin")
    want = hf_tensors(tmp_path / "tuned_bin")
    to_bin(tmp_path / "tuned_bin")
    wd.make(str(tmp_path / "base"), str(tmp_path / "tuned_bin"), str(tmp_path / "diff_bin"))
    wd.recover(str(tmp_path / "base"), str(tmp_path / "diff_bin"), str(tmp_path / "rec_bin"))
    assert sorted(os.listdir(tmp_path / "rec_bin")) == ["config.json", "model.safetensors"]
    got = hf_tensors(tmp_path / "rec_bin")
    assert set(got) == set(want) and all(same_bits(got[k], want[k]) for k in want)


def test_wrong_or_damaged_inputs_leave_nothing(tmp_path):
    base, tuned = pair(ELM)
    other, _ = pair(ELM, seed=1)
    for name, m, dtype in (("base", base, torch.bfloat16), ("tuned", tuned, torch.bfloat16),
                           ("other", other, torch.bfloat16), ("base32", base, torch.float32)):
        hf.save_model(m, tmp_path / name, dtype=dtype)
    wd.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "diff"))
    info = json.loads((tmp_path / "diff" / "weight_diff.json").read_text())
    other_sd = hf_tensors(tmp_path / "other")  # norm weights start at 1 in both: the first difference comes later
    first = next(k for k, e in info["tensors"].items() if wd.sha256(other_sd[k]) != e["base_sha256"])
    assert first != next(iter(info["tensors"]))
    with pytest.raises(InputError, match=f"base tensor '{first}' differs .*another base .*{info['base_checksum']}"):
        wd.recover(str(tmp_path / "other"), str(tmp_path / "diff"), str(tmp_path / "rec"))
    with pytest.raises(InputError, match=r"tensor .* is float32 \[.*\] in base but bfloat16 \[.*\] in the diff: the diff was made against another base"):
        wd.recover(str(tmp_path / "base32"), str(tmp_path / "diff"), str(tmp_path / "rec"))
    # a damaged diff file: caught by the tuned checksum after the addition, since the base is right
    f = tmp_path / "diff" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x7F  # the top byte of the last float: its sign and exponent
    f.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="recovered tensor .* does not match its checksum .*damaged"):
        wd.recover(str(tmp_path / "base"), str(tmp_path / "diff"), str(tmp_path / "rec"))
    assert not any(p.name.startswith((".rec", "rec")) for p in tmp_path.iterdir())  # no output, no temp folder


def test_bad_inputs_one_line_each(tmp_path):
    base, tuned = pair(LLAMA)
    hf.save_model(base, tmp_path / "base", dtype=torch.bfloat16)
    hf.save_model(tuned, tmp_path / "tuned", dtype=torch.bfloat16)
    hf.save_model(Transformer(ModelConfig(**{**LLAMA, "tie_embeddings": True})), tmp_path / "tied", dtype=torch.bfloat16)
    hf.save_model(Transformer(ModelConfig(**{**LLAMA, "vocab_size": 80})), tmp_path / "v80", dtype=torch.bfloat16)
    hf.save_model(tuned, tmp_path / "t32", dtype=torch.float32)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    cases = [(("nope", "tuned", "o"), r"--base=.*nope not found"),
             (("base", "tied", "o"), r"tensor 'lm_head.weight' is only in base"),
             (("base", "v80", "o"), r"tensor 'lm_head.weight' is bfloat16 \[64, 32\] in base but "
                                    r"bfloat16 \[80, 32\] in tuned"),
             (("base", "t32", "o"), r"is bfloat16 .* in base but float32 .* in tuned: diff two models of one architecture and dtype"),
             (("base", "tuned", "full"), r"--out=.*full exists and is not empty"),
             (("base", "full", "o"), r"neither a Hugging Face model")]
    for (b, t, o), msg in cases:
        with pytest.raises(InputError, match=msg):
            wd.make(str(tmp_path / b), str(tmp_path / t), str(tmp_path / o))
    with pytest.raises(InputError, match="weight_diff.json not found: it is not a diff"):
        wd.recover(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "o"))
    with pytest.raises(InputError, match="--diff=.*nope not found"):
        wd.recover(str(tmp_path / "base"), str(tmp_path / "nope"), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- our checkpoints

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """What prepare.py leaves: meta.json naming a SentencePiece tokenizer.model beside it."""
    import sentencepiece as spm
    d = tmp_path_factory.mktemp("data")
    words = ["red bird", "cold river", "a big cat sat", "the dog ran home", "xyz quick jumps"] * 40
    spm.SentencePieceTrainer.train(sentence_iterator=iter(words), model_prefix=str(d / "tokenizer"), vocab_size=32,
                                   minloglevel=2)
    import data
    from tokenizer import Tokenizer
    data.write_meta(d, {}, Tokenizer(d / "tokenizer.model"))
    return str(d)


@pytest.mark.parametrize("cfg", [LLAMA, ELM], ids=["llama", "openelm"])
def test_our_checkpoint_round_trip(tmp_path, data_dir, cfg):
    base, tuned = pair(cfg)
    settings = {"learning_rate": 1e-4, "out_dir": "ft"}
    checkpoint.save(str(tmp_path / "base"), 10, base, torch.optim.AdamW(base.parameters()), {}, data_dir=data_dir)
    checkpoint.save(str(tmp_path / "tuned"), 20, tuned, torch.optim.AdamW(tuned.parameters()), settings, data_dir=data_dir)
    wd.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "diff"))  # run dirs: their latest
    info = json.loads((tmp_path / "diff" / "weight_diff.json").read_text())
    assert info["kind"] == "ours" and info["fixup_elements"] == len(FIXED[torch.float32])
    diffs = hf_tensors(tmp_path / "diff")  # our plain names, in float64
    assert set(diffs) == set(tuned.state_dict()) and all(d.dtype == torch.float64 for d in diffs.values())
    assert sorted(os.listdir(tmp_path / "diff")) == [wd.FIXUPS, "meta.json", "model.safetensors", "tokenizer.model",
                                                      "train.json", "weight_diff.json"]
    wd.recover(str(tmp_path / "base" / "step_0000010"), str(tmp_path / "diff"), str(tmp_path / "rec"))
    assert checkpoint.resolve(str(tmp_path / "rec")) == str(tmp_path / "rec")
    assert sorted(f for f in os.listdir(tmp_path / "rec") if not f.endswith(".distcp")) == \
        [".metadata", "meta.json", "tokenizer.model", "train.json"]  # weights only: no optimizer, no RNG state
    model, tok = checkpoint.load_model(str(tmp_path / "rec"))
    assert tok is not None and tok.vocab_size == 32
    sd, want = model.state_dict(), tuned.state_dict()
    assert set(sd) == set(want) and all(same_bits(sd[k], want[k]) for k in want)
    assert torch.equal(logits(model), logits(tuned))
    info = checkpoint.read_info(str(tmp_path / "rec"))
    assert info["step"] == 20 and info["settings"] == settings and checkpoint.model_config(info) == tuned.config


def test_mixed_kinds_refused(tmp_path, data_dir):
    base, tuned = pair(LLAMA)
    checkpoint.save(str(tmp_path / "ours"), 1, tuned, torch.optim.AdamW(tuned.parameters()), {}, data_dir=data_dir)
    hf.save_model(base, tmp_path / "hf")
    with pytest.raises(InputError, match="--base is a Hugging Face directory but --tuned is one of our checkpoints"):
        wd.make(str(tmp_path / "hf"), str(tmp_path / "ours"), str(tmp_path / "o"))


# ----------------------------------------------------------------------------- the command line

def test_command_line(tmp_path):
    base, tuned = pair(ELM)
    hf.save_model(base, tmp_path / "base", dtype=torch.bfloat16)
    hf.save_model(tuned, tmp_path / "tuned", dtype=torch.bfloat16)
    run = lambda *a: subprocess.run([sys.executable, "weight_diff.py", *a], cwd=ROOT, capture_output=True, text=True,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = run("make", f"--base={tmp_path / 'base'}", f"--tuned={tmp_path / 'tuned'}", f"--out={tmp_path / 'diff'}")
    assert r.returncode == 0, r.stderr
    total = json.loads((tmp_path / "diff" / "weight_diff.json").read_text())["tuned_checksum"]
    assert f"tuned checksum {total}" in r.stdout
    r = run("recover", f"--base={tmp_path / 'base'}", f"--diff={tmp_path / 'diff'}", f"--out={tmp_path / 'rec'}")
    assert r.returncode == 0 and f"checksum {total} matches" in r.stdout, r.stderr
    r = run("recover", f"--base={tmp_path / 'base'}", f"--out={tmp_path / 'x'}")
    assert r.returncode != 0 and r.stderr.strip() == "error: recover needs --diff=PATH"
    r = run("diff", "--base=x")
    assert r.returncode != 0 and r.stderr.strip().startswith("error: unknown command 'diff'")
