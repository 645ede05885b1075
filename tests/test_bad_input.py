# Hostile but realistic input to every script: each bad input must end in exactly one stderr line starting with
# "error:", exit status 2, and no change to what is already on disk. The cases of a script run in one subprocess
# (importing torch once), each through the script's own main() under configurator.main, on a fresh copy of the
# module; a few run as their own command lines too. Then what must never be lost: a kill in a save, a torn or
# missing `latest`, two writers on one out_dir, a checkpoint overwritten with garbage.
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import data as data_lib
import hf
from conftest import ROOT, TINY, base, make_data, run
from model import ModelConfig, Transformer

DRIVER = r"""
import contextlib, importlib, io, json, os, sys
sys.path.insert(0, os.getcwd())
import configurator
out = []
for argv in json.loads(sys.argv[2]):
    module = importlib.reload(importlib.import_module(sys.argv[1]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            configurator.main(module.main, argv)
            code = 0
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def snapshot(*dirs):
    """Every file under the folders, with its size and modification time."""
    seen = {}
    for d in dirs:
        for root, _, names in os.walk(d):
            for f in names:  # the lock file names its last holder; nothing else may change
                p = os.path.join(root, f)
                if f != ".lock":
                    seen[p] = (os.path.getsize(p), os.path.getmtime(p))
    return seen


def assert_refused(script, cases, *watched):
    """Run each (argv, words) case of `script`; each must exit 2 with exactly one stderr line starting with
    `error:`, the last, containing words, no traceback, and leave the watched folders as they were (what a script
    prints before it, such as sample.py's settings, may stay)."""
    before = snapshot(*watched)
    p = subprocess.run([sys.executable, "-c", DRIVER, script, json.dumps([argv for argv, _ in cases])], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for (argv, words), (code, err) in zip(cases, json.loads(p.stdout.strip().splitlines()[-1])):
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert code == 2 and errors == lines[-1:] and "Traceback" not in err, (script, argv, code, err[-2000:])
        assert words in errors[0], (script, argv, errors[0])
    assert snapshot(*watched) == before, f"{script}: a refused input changed files"
    return len(cases)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data folder, a trained run with two checkpoints, its Hugging Face export, a config file."""
    root = tmp_path_factory.mktemp("world")
    d = make_data(root / "data")
    s = base(root, d, "run", max_iters=2, save_interval=1, keep_last=0, dtype="float32")
    run(**s)
    hf.save_model(checkpoint.load_model(s["out_dir"])[0], root / "hf")
    (root / "a.txt").write_text("red bird cold river " * 50)
    (root / "notutf8.txt").write_bytes(b"\xff\xfe bad bytes")
    (root / "empty.txt").write_text("")
    return {"root": root, "data": d, "run": s["out_dir"], "hf": str(root / "hf"), "s": s}


def test_train_refuses_bad_input(world, tmp_path):
    w, new = world, str(tmp_path / "new")
    common = [f"--data_dir={w['data']}", f"--out_dir={new}", "--dtype=float32", "--block_size=32", "--vocab_size=64",
              "--n_layer=1", "--n_embd=32", "--n_head=2", "--ffn_dim=32", "--batch_size=2", "--global_batch_size=2"]
    bad_cfg = tmp_path / "bad_cfg.py"
    bad_cfg.write_text("n_layer = 2\nbatch_size = 1 / 0\n")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("n_layer = (2\n")
    long_name = "x" * 300
    (tmp_path / "binary.py").write_bytes(b"\xff\xfe\x00n_layer = 2\n")
    (tmp_path / "later.py").write_text("max_iters = 5\n")
    cases = [
        (common + ["--seed=99999999999999999999"], "seed=99999999999999999999 must be in [0, 2**63)"),
        (common + ["--out_dir="], "out_dir is empty: name the folder to write"),
        (common + ["--out_dir=."], "is the working directory or holds it"),
        (common + ["--out_dir=.."], "is the working directory or holds it"),
        (common + ["--max_iters=None"], "sets max_iters=None (NoneType), but max_iters takes an integer"),
        (common + ["--max_iters=2", str(tmp_path / "later.py")], "comes after --max_iters=2 and sets max_iters again"),
        (common + ["--lora_targets=out_proj"], "sets a LoRA option but lora_rank=0 trains every weight"),
        (common + [f"--init_from={w['run']}", "--lora_rank=2", "--lora_alpha=0.0"], "lora_alpha=0.0 scales"),
        (common + [str(tmp_path / "binary.py")], "binary.py is not UTF-8 text"),
        (common + ["--max_iters=-1"], "max_iters=-1 must be at least 0"),
        (common + ["--eval_windows=0", "--eval_interval=5"], "eval_windows=0 scores no val windows"),
        (common + ["--learning_rate=-0.1"], "learning_rate=-0.1 must be at least 0"),
        (common + ["--beta2=1.5"], "beta2=1.5 must be in [0, 1)"),
        (common + ["--device=tpu"], "use auto, cpu, cuda, cuda:N or mps"),
        (common + ["--n_head=3"], "n_embd=32 is not divisible by n_head=3"),
        (common + ["--init=xavier"], "init must be 'normal' or 'corenet'"),
        (common + ["--qkv_multipliers='abc'", "--ffn_multipliers=(0.5, 4.0)", "--head_dim=16"], "qkv_multipliers must be"),
        (common + ["--parallel=zero3"], "parallel='zero3' is not one of"),
        (common + ["--global_batch_size=3"], "global_batch_size=3 is not a multiple of batch_size"),
        (common + ["--vocab_size=32"], "set --vocab_size=64"),
        (common + ["--vocab_size=32000"], "tokenizer has 64 tokens but the model has vocab_size=32000: set --vocab_size=64"),
        (common + [str(bad_cfg)], "bad_cfg.py, line 2: ZeroDivisionError"),
        (common + [str(syntax)], "syntax.py, line 1"),
        (common + [f"--out_dir={w['root'] / 'a.txt' / 'run'}"], "is a file"),
        (common + [f"--out_dir={tmp_path / long_name}"], "more than the 255 a file name may have"),
        (common + [f"--log_file={tmp_path / 'nowhere' / 'log.jsonl'}"], "does not exist: create it first"),
        (common + [f"--data_dir={tmp_path / 'nodata'}"], "prepare the data first"),
        (common + ["--lora_rank=4", "--lora_targets=q_proj"], "lora_targets must name projections"),
        (common + ["--init_from=resume"], "holds no checkpoint"),
        (["--init_from=resume", f"--out_dir={w['run']}", "--resume_step=7"], "step_0000007 is not there"),
        (["--init_from=resume", f"--out_dir={w['run']}", "--n_layer=4"], "keeps its architecture"),
        ([f"--out_dir={w['run']}", f"--data_dir={w['data']}"], "already holds checkpoints"),
        ([f"--init_from={w['run']}", f"--out_dir={w['run']}", f"--data_dir={w['data']}"], "already holds checkpoints"),
        ([f"--init_from={w['run']}", f"--out_dir={w['data']}", f"--data_dir={w['data']}"],
         "holds prepared data, which a run's checkpoints would mix with: use another --out_dir"),
        ([f"--init_from={w['run']}", f"--out_dir={w['hf']}", f"--data_dir={w['data']}"], "holds a model, which a run's"),
        (common + ["--n_layer=0"], "n_layer=0 must be at least 1"),
        (common + ["--n_embd=0"], "n_embd=0 must be at least 1"),
        (common + ["--norm_eps=-1.0"], "norm_eps=-1.0 must be above 0"),
        (common + ["--rope_theta=0.0"], "rope_theta=0.0 must be above 0"),
        (common + ["--z_loss=-1.0"], "z_loss=-1.0 must be at least 0"),
        (common + ["--qkv_multipliers=(0.5, 0.6, 0.7)", "--ffn_multipliers=(0.5, 4.0)", "--head_dim=16"], "must have 2 entries"),
        (common + ["--qkv_multipliers=(-1, 1)", "--ffn_multipliers=(0.5, 4.0)", "--head_dim=16"], "must be above 0"),
        (common + [f"--data_dir={w['root'] / 'a.txt'}"], "a.txt is a file, not a folder"),
        (["--init_from=resume", f"--out_dir={w['run']}", "--max_iters=1"], "past max_iters=1: raise --max_iters"),
    ] + [(common + ["--device=cuda"], "has no CUDA GPU")] * (not torch.cuda.is_available())
    assert_refused("train", cases, w["root"])
    assert not os.path.exists(new)  # a failed start leaves no out_dir behind


def test_damaged_files_are_named(world, tmp_path):
    shutil.copytree(world["data"], tmp_path / "data")
    shutil.copytree(world["run"], tmp_path / "run")
    d, r = tmp_path / "data", tmp_path / "run"
    common = [f"--data_dir={d}", f"--out_dir={tmp_path / 'new'}", "--dtype=float32", *(f"--{k}={v}" for k, v in TINY.items())]
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps(meta)[:50])  # truncated
    p = subprocess.run([sys.executable, "-c", DRIVER, "train", json.dumps([common])], cwd=ROOT, capture_output=True, text=True)
    code, err = json.loads(p.stdout.strip().splitlines()[-1])[0]
    assert code == 2 and err.startswith(f"error: {d / 'meta.json'} is damaged (JSONDecodeError") and err.count("\n") == 1
    (d / "meta.json").write_text(json.dumps({**meta, "splits": None}))  # valid JSON, but not ours
    with pytest.raises(ValueError, match="is damaged"):
        data_lib.read_meta(d)
    (d / "meta.json").write_text(json.dumps({**meta, "tokenizer_file": "tokenizer.model"}))  # named, not there
    import train
    with pytest.raises(ValueError, match="lacks tokenizer.model, the tokenizer its meta.json names .*: re-run prepare.py"):
        train.load_data({"data_dir": str(d), "block_size": 32})
    (d / "meta.json").write_text(json.dumps(meta))
    with open(d / "train.bin", "ab") as f:
        f.write(b"\x00")  # an odd byte: not a whole number of uint16
    with pytest.raises(ValueError, match=r"train.bin is damaged \(\d+ bytes: not a whole number of uint16"):
        data_lib.open_split(d, "train")
    (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-3])  # whole tokens, but fewer than meta.json says
    with pytest.raises(ValueError, match="but meta.json says .* uint16 values: it does not describe them"):
        data_lib.open_split(d, "train")
    (d / "train.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"train.bin is damaged \(0 bytes"):
        data_lib.open_split(d, "train")
    # checkpoints: a garbage `latest` falls back (a note, not an error); a damaged train.json, a truncated or
    # garbage-filled shard is named, with the newest intact checkpoint beside it
    (r / "latest").write_text("\x00garbage\n")
    assert checkpoint.latest(str(r)) == str(r / "step_0000002")
    (r / "step_0000002" / "train.json").write_text("{")
    with pytest.raises(ValueError, match="train.json is damaged"):
        checkpoint.read_info(str(r / "step_0000002"))
    shutil.rmtree(r / "step_0000002")
    shutil.copytree(world["run"] + "/step_0000002", r / "step_0000002")
    shard = next(f for f in os.listdir(r / "step_0000002") if f.endswith(".distcp"))
    data = (r / "step_0000002" / shard).read_bytes()
    (r / "step_0000002" / shard).write_bytes(bytes(len(data)))  # same size, all zeros
    with pytest.raises(ValueError, match=rf"step_0000002 is damaged: {shard} does not match its checksum in train.json; "
                                         rf"the newest intact checkpoint is .*step_0000001"):
        checkpoint.load_model(str(r))
    (r / "step_0000002" / shard).write_bytes(data[: len(data) // 2])  # truncated: the run falls back to step 1
    assert checkpoint.latest(str(r)) == str(r / "step_0000001")
    model, _ = checkpoint.load_model(str(r))
    ref, _ = checkpoint.load_model(world["run"] + "/step_0000001")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    os.remove(r / "step_0000002" / ".metadata")  # a step folder named directly, no longer a checkpoint
    with pytest.raises(ValueError, match=r"step_0000002 is damaged \(it lacks train.json or .metadata\): use "
                                         r".*step_0000001, the newest intact one"):
        checkpoint.load_model(str(r / "step_0000002"))
    shutil.rmtree(r / "step_0000002")  # the data files copied beside the weights are checksummed too
    shutil.copytree(world["run"] + "/step_0000002", r / "step_0000002")
    os.remove(r / "step_0000002" / "meta.json")
    assert checkpoint.latest(str(r), quiet=True) == str(r / "step_0000001")
    with pytest.raises(ValueError, match=r"step_0000002 lacks meta.json \(missing\); the newest intact checkpoint is"):
        checkpoint.load_model(str(r / "step_0000002"))
    shutil.copytree(world["hf"], tmp_path / "hf_bad")
    (tmp_path / "hf_bad" / "config.json").write_text('{"model_type": "llama",')  # cut short: named as damaged
    with pytest.raises(ValueError, match=r"hf_bad/config.json is damaged \(JSONDecodeError"):
        checkpoint.load_model(str(tmp_path / "hf_bad"))
    shutil.copytree(world["hf"], tmp_path / "hf_bin")  # weights that are no pickle: no advice to unpickle them anyway
    os.remove(tmp_path / "hf_bin" / "model.safetensors")
    (tmp_path / "hf_bin" / "pytorch_model.bin").write_bytes(bytes(range(256)) * 12)
    with pytest.raises(ValueError, match=r"cannot read .*pytorch_model.bin as a weights file \(UnpicklingError\): "
                                         r"download it again$"):
        checkpoint.load_model(str(tmp_path / "hf_bin"))
    hf.save_model(model, tmp_path / "step_0000009")  # a Hugging Face folder that happens to be named like a step
    assert checkpoint.load_model(str(tmp_path / "step_0000009"))[0].config.layer_dims() == model.config.layer_dims()


def test_sample_refuses_bad_input(world, tmp_path):
    run_dir, tok_only = world["run"], tmp_path / "tok_only"
    tok_only.mkdir()
    (tok_only / "tokenizer.model").write_bytes(b"x")
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(32))
    (tmp_path / "empty_lines.txt").write_text("\n  \n\n")
    shutil.copytree(world["hf"], tmp_path / "nan_hf")  # an export whose weights a divergence (or a bad copy) made NaN
    from safetensors.torch import load_file, save_file
    sd = load_file(tmp_path / "nan_hf" / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in sd.items()}, tmp_path / "nan_hf" / "model.safetensors",
              metadata={"format": "pt"})
    cases = [
        ([f"--init_from={tmp_path / 'nan_hf'}", "--tokenizer=" + world["data"]], "holds NaN or inf: these weights are damaged"),
        ([f"--init_from={tmp_path / 'nowhere'}"], "not found"),
        ([f"--init_from={world['root'] / 'a.txt'}"], "a.txt' is a file, not a checkpoint folder"),
        ([f"--init_from={tok_only}"], "holds a tokenizer (tokenizer.model) but no model"),
        ([f"--init_from={tmp_path / 'm.gguf'}"], "is a GGUF file"),
        ([f"--init_from={run_dir}", "--dtype=float64"], "dtype='float64': use auto"),
        ([f"--init_from={run_dir}"], "holds no tokenizer"),
        ([f"--init_from={run_dir}", "--num_samples=0"], "num_samples=0 must be at least 1"),
        ([f"--init_from={run_dir}", "--device=tpu"], "device='tpu': use auto, cpu, cuda, cuda:N or mps"),
        ([f"--init_from={run_dir}", "--stop=(1, 2)"], "give a tuple of non-empty strings"),
        ([f"--init_from={run_dir}", "--stop=('',)"], "give a tuple of non-empty strings"),
        ([f"--init_from={run_dir}", "--seed=-1"], "seed=-1 must be in [0, 2**63)"),
        ([f"--init_from={run_dir}", "--temperature=None"], "temperature=None (NoneType), but temperature takes a number"),
    ] + [([f"--init_from={run_dir}", "--device=cuda"], "has no CUDA GPU")] * (not torch.cuda.is_available())
    assert_refused("sample", cases, world["root"])
    # with a tokenizer: the generation controls (a SentencePiece model trained on the spot)
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["red bird cold river"] * 200), vocab_size=40,
                                   model_prefix=str(tmp_path / "sp"), minloglevel=2, hard_vocab_limit=False)
    m = Transformer(ModelConfig(vocab_size=64, block_size=32, n_layer=1, n_embd=32, n_head=2, ffn_dim=32))
    hf.save_model(m, tmp_path / "hf", tokenizer=tmp_path / "sp.model")
    (tmp_path / "lines.txt").write_text("a short one\n\n" + "word " * 40 + "\n")
    g = [f"--init_from={tmp_path / 'hf'}", "--device=cpu"]
    cases = [
        (g + ["--max_new_tokens=-5"], "max_new_tokens=-5 must be >= 0"),
        (g + ["--top_k=-1"], "top_k=-1 must be >= 0"),
        (g + ["--temperature=-1.0"], "temperature=-1.0 must be >= 0"),
        (g + ["--repetition_penalty=0.0"], "repetition_penalty=0.0 must be > 0"),
        (g + ["--repetition_penalty=-2.0"], "repetition_penalty=-2.0 must be > 0"),
        (g + ["--top_p=1.5"], "top_p=1.5 must be in [0, 1]"),
        (g + ["--num_assistant_tokens=0", f"--assistant_model={tmp_path / 'hf'}"], "num_assistant_tokens=0"),
        (g + [f"--start=FILE:{tmp_path / 'empty_lines.txt'}", "--each_line=True"], "found no prompt lines"),
        (g + [f"--start=FILE:{world['root'] / 'notutf8.txt'}"], "is not UTF-8 text"),
        (g + [f"--start=FILE:{tmp_path / 'missing.txt'}"], "cannot read the prompt file"),
        (g + ["--start=" + "word " * 40], "the prompt has"),
        (g + [f"--start=FILE:{tmp_path / 'lines.txt'}", "--each_line=True"], "prompt line 2 (blank lines not counted) has"),
        (g + [f"--start=FILE:{tmp_path / 'empty_lines.txt'}", "--chat=True"], "empty_lines.txt holds no message"),
        (g + ["--temperature=nan"], "--temperature=nan: temperature must be a finite number"),
        (g + ["--top_p=1e999"], "--top_p=1e999: top_p must be a finite number"),
    ]
    assert_refused("sample", cases, world["root"], tmp_path / "hf")


def test_eval_refuses_bad_input(world, tmp_path):
    (tmp_path / "tasks" / "piqa").mkdir(parents=True)
    (tmp_path / "tasks" / "piqa" / "validation.jsonl").write_text(json.dumps({"goal": "x", "sol1": "a"}) + "\n")
    (tmp_path / "tasks" / "boolq").mkdir()
    (tmp_path / "tasks" / "boolq" / "validation.jsonl").write_text("\n\n")
    (tmp_path / "tasks" / "sciq").mkdir()
    (tmp_path / "tasks" / "sciq" / "test.jsonl").write_bytes(b"\xff\xfe\n")
    (tmp_path / "nolabel.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    for case, doc in (("label2", {"label": 2}), ("int", {"sol1": 123}), ("empty", {"sol2": ""})):
        (tmp_path / case / "piqa").mkdir(parents=True)
        (tmp_path / case / "piqa" / "validation.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b",
                                                                               "label": 0, **doc}) + "\n")
    fifo = tmp_path / "results.pipe"  # a device or a pipe: never to be replaced by the results file
    os.mkfifo(fifo)
    os.symlink(tmp_path / "real.json", tmp_path / "link.json")
    (tmp_path / "notjson.jsonl").write_text(json.dumps({"text": "x"}) + "\n{text: y}\n")
    m = [f"--init_from={world['hf']}"]
    cases = [
        (m + ["--tasks=piqa", "--num_fewshot=-1"], "num_fewshot=-1 must be at least 0"),
        (m + ["--tasks=piqa", "--limit=-1"], "limit=-1 must be at least 0"),
        (m + ["--tasks=piqa", f"--out_file={tmp_path}"], "is a folder, not a file"),
        (m + ["--tasks=piqa", f"--out_file={fifo}"], "is a device or pipe, which an atomic write would replace"),
        (m + ["--tasks=piqa", f"--out_file={tmp_path / 'link.json'}"], "link.json is a symbolic link, which an atomic"),
        (m + ["--tasks=piqa", f"--out_file={tmp_path / 'no' / 'r.json'}"], "does not exist: create it first"),
        (m + ["--tasks=nope"], "unknown task 'nope'"),
        ([f"--init_from={world['run']}", "--ppl=x"], "holds no tokenizer"),
        (m + [], "nothing to evaluate"),
        (m + ["--tasks=piqa", "--dtype=int8"], "dtype='int8'"),
        (m + ["--ppl=x", "--device=gpu"], "device='gpu': use auto, cpu, cuda, cuda:N or mps"),
        (m + ["--ppl=x", f"--tokenizer={world['data']}"], "names no tokenizer file in its meta.json"),
    ]
    assert_refused("eval", cases, world["root"], tmp_path / "tasks")
    # task and text files, read before a model is needed: through the library, as a notebook would
    import eval as ev
    with pytest.raises(ValueError, match=r"validation.jsonl line 1 is no piqa document \(KeyError: 'sol2'\)"):
        ev.read_docs(str(tmp_path / "tasks"), "piqa", "validation")
    with pytest.raises(ValueError, match="holds no documents"):
        ev.read_docs(str(tmp_path / "tasks"), "boolq", "validation")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        ev.read_docs(str(tmp_path / "tasks"), "sciq", "test")
    model = checkpoint.load_model(world["run"])[0]
    with pytest.raises(ValueError, match=r"nolabel.jsonl line 1 has no 'text' string"):
        ev.text_perplexity(model, None, str(tmp_path / "nolabel.jsonl"), 32)
    for case, words in (("label2", "the answer 2 is not one of its 2 options"), ("empty", "an empty option"),
                        ("int", "a question or option that is not text")):  # scored 0, a ZeroDivisionError, a TypeError
        with pytest.raises(ValueError, match=rf"validation.jsonl line 1 is no piqa document \({words}\)"):
            ev.read_docs(str(tmp_path / case), "piqa", "validation")
    with pytest.raises(ValueError, match=r"notjson.jsonl line 2 is not JSON"):
        ev.text_perplexity(model, None, str(tmp_path / "notjson.jsonl"), 32)
    with pytest.raises(ValueError, match="holds no text to score"):
        ev.text_perplexity(model, None, str(world["root"] / "empty.txt"), 32)


def test_prepare_export_and_weight_diff_refuse_bad_input(world, tmp_path):
    import sentencepiece as spm
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.json").write_text('{"instruction": "a"')
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["red bird cold river"] * 200), vocab_size=40,
                                   model_prefix=str(inputs / "sp"), minloglevel=2, hard_vocab_limit=False)
    (inputs / "scan.pdf").write_bytes(b"%PDF-1.4\n\xff\xd8\xff\xe0" * 50)
    cases = [
        ([f"--source={inputs / 'scan.pdf'}", f"--data_root={tmp_path}"], "skipped as unreadable or not UTF-8 "
                                                                          f"{inputs / 'scan.pdf'} (UnicodeDecodeError) and 0 more"),
        ([f"--source={inputs}", "--extensions=.docx .odt", f"--data_root={tmp_path}"], "holds no files ending in .docx .odt"),
        ([f"--source={inputs / 'broken.json'}", f"--data_root={tmp_path}"], "broken.json is a JSON file: for instruction"),
        (["--source=stdlib", "--chat_format=alpaca", f"--data_root={tmp_path}"], "is plain text, not conversations"),
        ([f"--source={inputs / 'broken.json'}", "--chat_format=auto", "--text_field=body", f"--data_root={tmp_path}"],
         "text_field='body' names the text column of plain-text sources"),
        ([f"--source={world['root'] / 'a.txt'}", f"--data_root={world['root'] / 'a.txt'}"], "is a file"),
        ([f"--source={world['root'] / 'a.txt'}", "--name=" + "n" * 300, f"--data_root={tmp_path}"], "more than the 255"),
        ([f"--source={tmp_path / 'missing'}"], "not found"),
        ([f"--source={world['root'] / 'a.txt'}", "--val_fraction=0.7", "--test_fraction=0.5"], "sum to less than 1"),
        ([f"--source={world['root'] / 'a.txt'}", "--dtype=int8"], "dtype='int8'"),
        ([f"--source={world['root'] / 'a.txt'}", "--chat_format=fancy", f"--data_root={tmp_path}"], "chat_format='fancy'"),
        ([f"--source={world['root'] / 'a.txt'}", "--max_documents=-1", f"--data_root={tmp_path}"], "max_documents=-1"),
        ([f"--source={world['root'] / 'a.txt'}", "--name=../escape", f"--data_root={tmp_path}"], "not a path"),
        # refused after the tokenizer was copied in: the new folder goes, whatever it held
        ([f"--source={inputs / 'broken.json'}", "--chat_format=alpaca", f"--tokenizer={inputs / 'sp.model'}",
          "--seq_len=16", f"--data_root={tmp_path}"], "broken.json (JSONDecodeError): fix or remove it"),
    ]
    assert_refused("prepare", cases, world["root"])
    assert os.listdir(tmp_path) == ["in"]
    cases = [
        ([], "give --init_from="),
        ([f"--init_from={world['run']}", f"--out={world['root'] / 'a.txt'}"], "is a file, not a folder"),
        ([f"--init_from={world['run']}", f"--out={world['root'] / 'a.txt' / 'x'}"], "is a file, so nothing can be made"),
        ([f"--init_from={world['data']}"], "holds no checkpoint"),
        ([f"--init_from={world['run']}", f"--out={tmp_path / 'e'}", "--dtype=bf16"], "dtype='bf16': use float32 or"),
        ([f"--init_from={world['run']}", f"--out={tmp_path / 'e'}", "--max_shard_gb=0.0"], "max_shard_gb=0.0 must be"),
        ([f"--init_from={world['run']}", f"--out={world['run']}"], "holds checkpoints: export to a folder of its own"),
        ([f"--init_from={world['run']}", f"--out={world['data']}"], "holds prepared data: export to a folder of its own"),
        ([f"--init_from={world['hf']}", f"--out={world['hf']}"], "is init_from itself: the export would replace the model"),
        ([f"--init_from={world['run']}", f"--out={tmp_path / 'in'}"], "already holds other files (broken.json, scan.pdf, "
                                                                     "sp.model, ...): export to a new or empty folder"),
    ]
    assert_refused("export", cases, world["root"])
    cases = [
        (["make", f"--base={world['hf']}", f"--tuned={world['hf']}", f"--out={world['root'] / 'a.txt'}"], "is a file"),
        (["make", f"--base={world['hf']}", f"--tuned={world['run']}", f"--out={tmp_path / 'd'}"], "export ours"),
        (["unmake"], "unknown command 'unmake'"),
        (["make", f"--base={world['hf']}", f"--diff={world['hf']}", f"--out={tmp_path / 'd'}"], "make takes no --diff"),
        (["recover", f"--base={world['hf']}", f"--tuned={world['hf']}", f"--diff=x", f"--out={tmp_path / 'r'}"], "recover takes no --tuned"),
        (["recover", f"--base={world['hf']}", f"--diff={world['hf']}", f"--out={tmp_path / 'r'}"], "weight_diff.json not found: it is not a diff made by weight_diff.py"),
    ]
    assert_refused("weight_diff", cases, world["root"])


def test_help_lists_the_settings_with_their_defaults():
    for script, doc, line in (("train.py", "Pretraining and finetuning of OpenELM and LLaMA.", "  learning_rate = 3e-4\n"),
                              ("sample.py", "Generation from our checkpoints", "  temperature = 0.8  # 0 = greedy\n"),
                              ("prepare.py", "", "  vocab_size = 8192"), ("eval.py", "Perplexity and lm-evaluation-harness-style", '  init_from = "out/elm_tiny"')):
        for flag in ("--help", "-h") if script == "train.py" else ("--help",):
            p = subprocess.run([sys.executable, script, "configs/elm_tiny.py", flag], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
            assert p.returncode == 0 and p.stdout.strip().startswith(doc) and line in p.stdout, (script, p.stderr[-500:])
            assert "settings, with their defaults" in p.stdout and "ARCH" not in p.stdout


def test_a_real_command_line_and_torchrun_print_one_line(world, tmp_path):
    p = subprocess.run([sys.executable, "train.py", f"--data_dir={world['data']}", f"--out_dir={tmp_path / 'x'}",
                        "--max_iters=-3"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr == "error: max_iters=-3 must be at least 0\n" and not os.path.exists(tmp_path / "x")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                        f"--data_dir={world['data']}", f"--out_dir={tmp_path / 'y'}", "--batch_size=3",
                        "--global_batch_size=4", *(f"--{k}={v}" for k, v in TINY.items())],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ours = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode != 0 and ours == ["error: global_batch_size=4 is not a multiple of batch_size * world size = "
                                          "3 * 2: change --global_batch_size or --batch_size"], p.stderr[-3000:]
    assert "train.py\", line" not in p.stderr  # torchrun reports the failure; no traceback of ours


# ----------------------------------------------------------------------------- nothing lost

KILLER = r"""
import os, signal, sys
sys.path.insert(0, os.getcwd())
import checkpoint, train
real = checkpoint.os.replace
def replace(src, dst):  # the process dies (kill -9) just before the second save's folder is renamed into place
    if os.path.basename(dst) == "step_0000002":
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
checkpoint.os.replace = replace
train.main(sys.argv[1:])
"""


def test_a_kill_during_a_save_loses_nothing(tmp_path, world):
    s = base(tmp_path, world["data"], "k", max_iters=4, save_interval=1, keep_last=0)
    argv = [f"--{k}={v}" for k, v in s.items()]
    p = subprocess.run([sys.executable, "-c", KILLER, *argv], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL
    out = s["out_dir"]
    assert sorted(os.listdir(out)) == [".lock", ".step_0000002.tmp", "latest", "step_0000001"]
    os.remove(os.path.join(out, "latest"))  # and `latest` lost too: the newest complete step folder is found
    os.makedirs(os.path.join(out, ".step_0000001.del"))  # debris of a prune killed mid-delete
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(**{**s, "max_iters": 1})  # a scratch run would overwrite them
    log = run(init_from="resume", out_dir=out, log_file=str(tmp_path / "k2.jsonl"))
    assert [r["step"] for r in log if "loss" in r] == [2, 3, 4]
    assert sorted(os.listdir(out)) == [".lock", "latest", "step_0000001", "step_0000002", "step_0000003", "step_0000004"]
    straight = run(**{**s, "out_dir": str(tmp_path / "straight"), "log_file": str(tmp_path / "st.jsonl")})
    assert [r["loss"] for r in log] == [r["loss"] for r in straight][1:]  # resumed exactly
    # the first checkpoint of a run torn the same way: no complete one, so no resume, and a scratch run is allowed
    shutil.rmtree(out)
    os.makedirs(os.path.join(out, ".step_0000001.tmp"))
    with pytest.raises(ValueError, match="holds no checkpoint"):
        run(init_from="resume", out_dir=out)
    run(**{**s, "max_iters": 1})
    assert sorted(os.listdir(out)) == [".lock", "latest", "step_0000001"]


def test_two_writers_on_one_out_dir(tmp_path, world):
    s = base(tmp_path, world["data"], "busy", max_iters=100000, save_interval=-1, log_interval=1000)
    first = subprocess.Popen([sys.executable, "train.py", *(f"--{k}={v}" for k, v in s.items())], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = os.path.join(s["out_dir"], ".lock")
        for _ in range(600):
            if os.path.isfile(lock) and f"pid {first.pid}" in open(lock).read():
                break
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "train.py", *(f"--{k}={v}" for k, v in s.items())], cwd=ROOT,
                                capture_output=True, text=True)
        assert second.returncode == 2 and second.stderr.startswith(f"error: out_dir={s['out_dir']} is being written by "
                                                                   f"pid {first.pid} (") and second.stderr.count("\n") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    run(**{**s, "max_iters": 1, "save_interval": 0})  # the kernel dropped the dead writer's lock
