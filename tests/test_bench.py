"""The reference implementations bench.py times ours against must compute what ours computes, or the ratios
it prints compare different work."""
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import bench
import data
import eval as ev
import sample
from configurator import InputError
from conftest import ROOT, TINY, TINY_ELM, VOCAB, base, make_data, run
from model import ModelConfig, Transformer


def test_minimal_decoder_generates_what_sample_generate_does():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY)).eval()  # GQA 2, like the bench's LLaMA shape but smaller
    prompt = torch.randint(3, TINY["vocab_size"], (1, 7))
    ours = sample.generate(model, prompt, 20, greedy=True)
    assert torch.equal(bench.minimal_generate(model, prompt, 20), ours)


def test_weight_bytes_reads_one_embedding_row_unless_the_head_is_tied():
    untied = Transformer(ModelConfig(**TINY))
    every = sum(p.numel() * 4 for p in untied.parameters())
    assert bench.weight_bytes(untied) == every - untied.tok_embeddings.weight.numel() * 4
    tied = Transformer(ModelConfig(**TINY_ELM))
    assert tied.config.tie_embeddings
    assert bench.weight_bytes(tied) == sum(p.numel() * 4 for p in tied.parameters())


def test_each_codebase_steps_with_its_own_adamw():
    """The training benchmark gives each model the AdamW its codebase uses on a CPU: ours as train.py makes it
    (fused), nanoGPT's rule (fused only on CUDA: foreach here), transformers' Trainer default (fused)."""
    ours = Transformer(ModelConfig(**TINY_ELM))
    assert bench.adamw(ours).defaults["fused"] and len(bench.adamw(ours).param_groups) == 2  # configure_optimizers
    assert not bench.adamw(bench.GPT(97, 16, n_layer=1, n_embd=32, n_head=2)).defaults["fused"]
    assert bench.adamw(bench.hf_twin(Transformer(ModelConfig(**TINY)))[0]).defaults["fused"]


def test_interleaved_seconds_takes_turns_and_gives_each_rounds_median():
    """Rounds go in turns (a, b, a, b, ...); per_round gives each round's median of n steps, in order, which
    bench.py pairs into one ratio per round; without it, the median over the rounds."""
    from kernels.bench import interleaved_seconds
    calls, ticks = [], iter(range(1000))
    steps = {k: (lambda k=k: calls.append(k) or next(ticks)) for k in "ab"}
    rounds = interleaved_seconds(steps, rounds=3, n=3, per_round=True)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert rounds == {"a": [3, 9, 15], "b": [6, 12, 18]}  # ticks 0 and 1 went to the warm-up
    calls.clear()
    assert interleaved_seconds(steps, rounds=3, n=3) == {"a": 29, "b": 32}


def test_gpt_is_scored_as_eval_py_scores_ours(tmp_path):
    """bench.py train bpb scores the GPT with eval.token_split_perplexity, which reads a model's vocab_size and
    block_size from model.config: one window over the whole test split gives the model's own loss."""
    data_dir = make_data(tmp_path / "data")
    torch.manual_seed(0)
    gpt = bench.GPT(VOCAB, 1024, n_layer=1, n_embd=32, n_head=2).eval()
    out = ev.token_split_perplexity(gpt, data_dir, "test", 1024)
    ids = torch.from_numpy(np.fromfile(tmp_path / "data" / "test.bin", dtype=np.uint16).astype(np.int64))
    with torch.no_grad():
        loss = gpt(ids[None, :-1], ids[None, 1:])[1].item()
    nbytes = data.read_meta(data_dir)["splits"]["test"]["bytes"]
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(loss * (len(ids) - 1) / math.log(2) / nbytes, rel=1e-5)


def test_bpb_section_runs_end_to_end_on_a_tiny_run(tmp_path, capsys, monkeypatch):
    """`python bench.py train bpb` on a tiny trained run: both models are timed, the GPT trains for the same
    time (a GPT as small as the run's model, so that time buys it steps) and both are scored on the test split
    (this section once crashed only after minutes of training)."""
    s = base(tmp_path, make_data(tmp_path / "data"), "elm", **{**TINY_ELM, "max_iters": 3})
    run(**s)
    monkeypatch.setattr(bench, "GPT_TINY", dict(n_layer=1, n_embd=32, n_head=2))
    ours, gpt = bench.bench_train_bpb(run_dir=s["out_dir"])
    assert math.isfinite(ours) and math.isfinite(gpt) and 0 < ours < 10 and 0 < gpt < 10
    out = capsys.readouterr().out
    steps = int(re.search(r"GPT trains (\d+) steps", out).group(1))
    assert steps >= 1 and re.search(rf"\| nanoGPT GPT .* \| {steps} \(", out)
    # no run yet, and training it fails (no data, say): one line, not CalledProcessError's traceback
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 2))
    with pytest.raises(InputError, match=r"training .*none failed \(its error is above\): fix that, or train it"):
        bench.bench_train_bpb(run_dir=str(tmp_path / "none"))


def test_throughput_counts_the_rounds_ours_won(capsys, monkeypatch):
    """`bench.py train throughput --rounds=N` pairs each of the N rounds' timings of ours with theirs: the median
    of those ratios and the number of rounds ours was faster, which tells a margin from noise."""
    seen = []

    def fake(steps, rounds, per_round):  # GPT 2 s every round; elm_tiny 1, 1, 3; llama_tiny and HF level
        seen.append(rounds)
        return {k: [[1, 1, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1]][i] for i, k in enumerate(steps)}
    monkeypatch.setattr(bench, "interleaved_seconds", fake)
    monkeypatch.setattr(bench.train, "hold_freed_memory", lambda: None)  # leave the test process's allocator alone
    bench.bench_train(["throughput", "--rounds=3"])
    out = capsys.readouterr().out
    assert seen == [3] * out.count("training throughput") and seen
    assert out.count("elm_tiny / GPT: 0.50 (the median of the rounds' ratios; ours faster in 2 of 3 rounds)") == len(seen)
    assert out.count("llama_tiny / HF Llama: 1.00 (the median of the rounds' ratios; ours faster in 0 of 3") == len(seen)
    for bad in ("--rounds=0", "--rounds=x", "--rounds=2.5"):
        with pytest.raises(bench.InputError, match="--rounds takes a whole number of at least 1"):
            bench.bench_train(["throughput", bad])


def test_bad_options_stop_before_any_timing(tmp_path, monkeypatch):
    """Every section's numeric options are checked first, in one line; so is the section itself."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # what bench.py gpu --cpu asks for, before its options
    for section, args, words in ((bench.bench_sample, ["--new=abc"], "--new takes a whole number of at least 1, got 'abc'"),
                                 (bench.bench_sample, ["--threads=0"], "--threads takes a whole number of at least 1"),
                                 (bench.bench_sample, [f"--init_from={tmp_path / 'none'}"], "is not a checkpoint folder"),
                                 (bench.bench_gpu, ["--cpu", "--scale=-1"], "--scale takes a number of at least 0")):
        with pytest.raises(bench.InputError, match=words):
            section(args)
    (tmp_path / "f").write_text("")
    with pytest.raises(bench.InputError, match="is a file, not a folder"):
        bench.bench_gpu(["--cpu", f"--out={tmp_path / 'f'}"])
    p = subprocess.run([sys.executable, "bench.py", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        "error: unknown section 'nope': use python bench.py {decode|train|finetune|gpu} (the module docstring lists "
        "their options)"]

