"""Shared by the test modules: the interpreter switch for Triton, and the helpers that run train.py on tiny
models and synthetic data folders (test_train.py, test_lora.py, test_chat.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import torch

# Triton kernels run on the CPU through the interpreter; the variable must be set before triton is imported.
# Not with CUDA: there the same tests run the compiled kernels (the interpreter's bf16 tl.dot is wrong).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

import data  # noqa: E402
import checkpoint  # noqa: E402



def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one; `pytest -m gpu` selects them)")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 64
TINY = dict(vocab_size=VOCAB, block_size=32, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_dim=64)
TINY_ELM = dict(vocab_size=VOCAB, block_size=32, n_layer=3, n_embd=32, head_dim=8, qkv_multipliers=(0.5, 1.0),
                ffn_multipliers=(0.5, 2.0), num_gqa_groups=2, ffn_dim_divisor=16, qk_norm=True,
                tie_embeddings=True, init="corenet", z_loss=1e-4)


def make_data(path, n_tokens=6000, pad_id=None, repeat=None, seed=0):
    """A data folder as prepare.py writes it: BOS doc EOS streams with a learnable pattern (each token mostly
    determines the next), optional padding runs, meta.json. `repeat` = one fixed window only."""
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    splits = {}
    for split, n in (("train", n_tokens), ("val", 1000), ("test", 1000)):
        out = []
        while len(out) < n:
            t, doc = int(rng.integers(4, VOCAB)), []
            for _ in range(int(rng.integers(20, 80))):
                doc.append(t)
                t = (3 * t + 1) % (VOCAB - 4) + 4 if rng.random() < 0.9 else int(rng.integers(4, VOCAB))
            out += [1] + doc + [2] + ([pad_id] * int(rng.integers(0, 8)) if pad_id is not None else [])
        ids = np.array(out[:repeat or n], dtype=np.uint16)
        ids.tofile(os.path.join(path, f"{split}.bin"))
        splits[split] = {"files": [f"{split}.bin"], "tokens": len(ids), "documents": 1, "bytes": 4 * len(ids)}
    data.write_meta(path, splits, vocab_size=VOCAB, bos_id=1, eos_id=2, pad_id=pad_id, source="synthetic")
    return str(path)


def args(**settings):
    return [f"--{k}={v if isinstance(v, str) else repr(v)}" for k, v in settings.items()]


def base(tmp_path, data, name, **kw):
    s = dict(data_dir=data, out_dir=str(tmp_path / name), dtype="float32", batch_size=4, global_batch_size=4,
             max_iters=4, learning_rate=3e-3, min_lr=3e-4, warmup_iters=2, warmup_init_lr=1e-5, lr_decay_iters=8,
             log_interval=1, eval_interval=0, save_interval=0, log_file=str(tmp_path / f"{name}.jsonl"), **TINY)
    s.update(kw)
    if s.get("init_from", "scratch") not in ("scratch", "resume"):  # the architecture is the model's: TINY's is not asked
        s = {k: v for k, v in s.items() if k not in TINY or k in kw or k == "block_size"}
    return s


def run(**settings):
    """train.main in this process (it reads its settings, never changing the module's defaults)."""
    import train
    train.main(args(**settings))
    return [json.loads(line) for line in open(settings["log_file"])]


def losses(log, key="loss"):
    return [r[key] for r in log if key in r]



def torchrun(**settings):
    """train.py under `torchrun --nproc_per_node=2` (gloo on the CPU, one thread per rank)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *args(**settings)]
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]


def assert_same_run(s, one, one_dir):
    """The run of settings s (under torchrun) logged one's losses and gradient norms, and its checkpoint (written
    shard by shard under FSDP) loads in one process with one_dir's weights."""
    two = [json.loads(line) for line in open(s["log_file"])]
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    np.testing.assert_allclose(losses(two, "grad_norm"), losses(one, "grad_norm"), rtol=1e-4)
    if s.get("eval_interval"):  # the val loss is the same set's, whatever the world size and batch
        assert len(losses(one, "val_loss")) == 2
        np.testing.assert_allclose(losses(two, "val_loss"), losses(one, "val_loss"), rtol=1e-5)
    ours, _ = checkpoint.load_model(s["out_dir"])
    ref, _ = checkpoint.load_model(one_dir)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


