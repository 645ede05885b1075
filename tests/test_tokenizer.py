# tokenizer.py on Hugging Face tokenizer.json files (the only tokenizer most current Hub models and mlx-lm's folders
# ship): a Llama-style one converted by transformers from a SentencePiece model, and a byte-level BPE (Llama-3's
# kind) trained here; round trips, the chat template, prepare.py -> train.py -> checkpoint -> export, and the
# one-line messages for folders that hold no model we read.
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import checkpoint
import data as data_lib
import hf
import prepare
from configurator import InputError
from conftest import ROOT, run
from model import ModelConfig, Transformer
from tokenizer import Tokenizer, chat_text, encode_chat

tokenizers = pytest.importorskip("tokenizers")
TEXTS = ["def f(x):\n    return x  + 1\n\n\n\tpass", "h\u00e9llo w\u00f6rld 123 \u6f22\u5b57 \U0001f642", "a    b\n\n\tc",
         "x = {'k': [1, 2]}  # a    comment"]
CORPUS = [line for f in ("sample.py", "train.py", "eval.py") for line in open(os.path.join(ROOT, f), encoding="utf-8")]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm
    d = tmp_path_factory.mktemp("sp")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS + TEXTS), model_prefix=str(d / "sp"), vocab_size=600,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
    return d / "sp.model"


@pytest.fixture(scope="module")
def llama_json(sp_model, tmp_path_factory):
    """The SentencePiece model as transformers converts it: tokenizer.json + tokenizer_config.json, no .model."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("llama_json")
    hf.save_model(Transformer(ModelConfig(vocab_size=600, n_layer=1, n_embd=32, n_head=2, ffn_dim=32)), d / "src",
                  tokenizer=sp_model)
    transformers.AutoTokenizer.from_pretrained(d / "src").save_pretrained(d / "fast")
    assert not os.path.exists(d / "fast" / "tokenizer.model")
    return d / "fast"


@pytest.fixture(scope="module")
def byte_json(tmp_path_factory):
    """A byte-level BPE with Llama-3's special token names and no tokenizer_config.json."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path_factory.mktemp("byte_json")
    tk.save(str(d / "tokenizer.json"))
    return d


def test_llama_style_json_matches_sentencepiece(sp_model, llama_json):
    sp, fast = Tokenizer(sp_model), Tokenizer(llama_json)  # a folder: its tokenizer.json
    assert fast.kind == "tokenizers" and fast.name.endswith("tokenizer.json") and len(fast.files) == 2
    assert (fast.vocab_size, fast.bos_id, fast.eos_id, fast.pad_id) == (sp.vocab_size, sp.bos_id, sp.eos_id, sp.pad_id)
    for s in TEXTS:  # the same ids as the .model it was converted from, and back to the same text
        assert fast.encode(s, bos=True, eos=True) == sp.encode(s, bos=True, eos=True), s
        assert fast.decode(fast.encode(s)) == s
    for s in TEXTS:  # a continuation gets no dummy-prefix space, as SentencePiece's with add_dummy_prefix off
        assert fast.encode(s, continuation=True) == sp.encode(s, continuation=True), s


def test_byte_level_json_round_trips_and_guesses_special_tokens(byte_json):
    tok = Tokenizer(byte_json / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, None, 500)  # from the names alone
    for s in TEXTS + ["  leading spaces", ""]:
        ids = tok.encode(s, bos=True, eos=True)
        assert ids[0] == 0 and ids[-1] == 1 and tok.decode(ids[1:-1]) == s, s
    # tokenizer_config.json beside it names the roles: they win over the guesses
    other = byte_json.parent / "named"
    shutil.copytree(byte_json, other, dirs_exist_ok=True)
    (other / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": {"content": "<|begin_of_text|>"}}))
    named = Tokenizer(other)
    assert (named.bos_id, named.eos_id) == (0, 0)  # no BOS named: documents start after the EOS, as GPT-2's


@pytest.mark.parametrize("which", ["llama", "byte"])
def test_chat_template_with_a_json_tokenizer(llama_json, byte_json, which):
    tok = Tokenizer(llama_json if which == "llama" else byte_json)
    msgs = [("user", "Write  f(x):"), ("assistant", "def f(x):\n    return x"), ("user", "\u00e9t\u00e9?")]
    ids, mask = encode_chat(tok, msgs, add_generation_prompt=True)
    assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == (1 if tok.bos_id != tok.eos_id else 2)
    cut = len(ids) - 1 - ids[::-1].index(tok.eos_id)  # the reply's EOS
    text = chat_text(msgs, eos="", add_generation_prompt=True)
    assert tok.decode(ids[1:cut]) + tok.decode(ids[cut + 1:]) == text  # every piece joins without a stray space
    assert tok.decode([i for i, m in zip(ids, mask) if m][:-1]) == "def f(x):\n    return x"


def test_json_tokenizer_through_prepare_train_checkpoint_and_export(tmp_path, byte_json):
    transformers = pytest.importorskip("transformers")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("".join(CORPUS[:400]))
    (tmp_path / "text" / "b.txt").write_text("".join(CORPUS[400:800]))
    meta = prepare.prepare_data(str(tmp_path / "data"), source=str(tmp_path / "text"), num_proc=1,
                                tokenizer=str(byte_json / "tokenizer.json"), val_fraction=0.0, test_fraction=0.0)
    assert meta["tokenizer"] == "tokenizers" and meta["tokenizer_file"] == "tokenizer.json"
    tok = data_lib.load_tokenizer(tmp_path / "data")
    assert data_lib.open_split(tmp_path / "data", "train")[0][:20].tolist() == \
        tok.encode("".join(CORPUS[:400]), bos=True)[:20]
    run(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), max_iters=1, batch_size=2, global_batch_size=2,
        dtype="float32", log_interval=1, eval_interval=0, save_interval=0, log_file=str(tmp_path / "log.jsonl"),
        vocab_size=500, block_size=32, n_layer=1, n_embd=32, n_head=2, ffn_dim=64)
    model, loaded = checkpoint.load_model(str(tmp_path / "run"))
    assert loaded.kind == "tokenizers" and loaded.encode(TEXTS[0]) == tok.encode(TEXTS[0])
    hf.save_model(model, tmp_path / "hf", tokenizer=loaded)
    assert hf.load_tokenizer(tmp_path / "hf").encode(TEXTS[1]) == tok.encode(TEXTS[1])
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert theirs(TEXTS[0], add_special_tokens=False)["input_ids"] == tok.encode(TEXTS[0])
    assert theirs.eos_token == "<|end_of_text|>"
    r = subprocess.run([sys.executable, "sample.py", f"--init_from={tmp_path / 'hf'}", "--start=def", "--max_new_tokens=3",
                        "--greedy=True", "--device=cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("def"), r.stderr


def test_folders_that_hold_no_model_we_read_get_one_line(tmp_path, byte_json):
    shutil.copytree(byte_json, tmp_path / "tok_only")
    with pytest.raises(InputError, match=r"holds a tokenizer \(tokenizer.json\) but no model .*give the model's directory instead"):
        checkpoint.load_model(str(tmp_path / "tok_only"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    for where in (tmp_path / "m.gguf", tmp_path):
        with pytest.raises(InputError, match=r"m.gguf is a GGUF file \(llama.cpp's format\)"):
            checkpoint.load_model(str(where))
    # an mlx-lm quantized folder: config.json says so, and the tensors come in weight/scales/biases triples
    src = Transformer(ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, ffn_dim=64))
    hf.save_model(src, tmp_path / "mlx")
    cfg = json.loads((tmp_path / "mlx" / "config.json").read_text())
    (tmp_path / "mlx" / "config.json").write_text(json.dumps({**cfg, "quantization": {"group_size": 64, "bits": 4}}))
    with pytest.raises(InputError, match=r"holds a quantized model .*\"bits\": 4.*mlx_lm.convert .* -d"):
        checkpoint.load_model(str(tmp_path / "mlx"))
    from safetensors.torch import save_file
    (tmp_path / "mlx" / "config.json").write_text(json.dumps(cfg))  # the tensors alone give it away too
    sd = {k: v.contiguous() for k, v in hf._read_file(str(tmp_path / "mlx" / "model.safetensors"))}
    save_file({**sd, "model.layers.0.mlp.up_proj.scales": torch.ones(64, 1)}, tmp_path / "mlx" / "model.safetensors")
    with pytest.raises(InputError, match=r"is an MLX-quantized model .*'model.layers.0.mlp.up_proj.scales'"):
        hf.load_model(tmp_path / "mlx")
    save_file({**sd, "model.norm.weight": torch.ones(32, dtype=torch.int32)}, tmp_path / "mlx" / "model.safetensors")
    with pytest.raises(InputError, match=r"tensor 'model.norm.weight' holds int32 values, not floating-point weights"):
        hf.load_model(tmp_path / "mlx")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match=r"is not a Hugging Face tokenizer.json"):
        Tokenizer(tmp_path / "bad")
    nameless = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    nameless.save(str(tmp_path / "bad" / "tokenizer.json"))
    with pytest.raises(InputError, match=r"names no end-of-text token .*add a tokenizer_config.json with its eos_token"):
        Tokenizer(tmp_path / "bad" / "tokenizer.json")
