# train.py and checkpoint.py on a tiny model and a synthetic data folder: overfitting, exact resume,
# accumulation = one big batch, DDP/FSDP2 under torchrun = one process, checkpoints, refused settings.
import contextlib
import json
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
from configurator import InputError
from conftest import ROOT, TINY, TINY_ELM, VOCAB, args, assert_same_run, base, losses, make_data, run, torchrun



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


# ----------------------------------------------------------------------------- the loop


def test_overfits_a_repeated_batch(tmp_path):
    one = make_data(tmp_path / "one", repeat=33)  # block_size + 1 tokens: every window is the same window
    log = run(**base(tmp_path, one, "overfit", max_iters=25, learning_rate=2e-2, lr_decay_iters=25, **TINY_ELM))
    first, last = log[0]["loss"], log[-1]["loss"]
    assert last < 0.1 * first, (first, last)


def test_exact_resume_bf16_elm(tmp_path, data):
    kw = dict(dtype="bfloat16", **TINY_ELM)  # the CPU's default path: bf16 autocast, z-loss, QK-norm, tied
    straight = run(**base(tmp_path, data, "straight", max_iters=6, **kw))
    run(**base(tmp_path, data, "halves", max_iters=3, **kw))
    # resume takes the recipe from the checkpoint: only the new end (and a new log file) are given here
    run(init_from="resume", out_dir=str(tmp_path / "halves"), max_iters=6, log_file=str(tmp_path / "halves2.jsonl"))
    halves = [json.loads(line) for line in open(tmp_path / "halves.jsonl")] + \
             [json.loads(line) for line in open(tmp_path / "halves2.jsonl")]
    assert losses(halves) == losses(straight)  # bit-identical
    assert losses(halves, "grad_norm") == losses(straight, "grad_norm")
    assert os.path.basename(checkpoint.latest(str(tmp_path / "halves"))) == "step_0000006"


def test_resume_keeps_the_checkpoints_settings(tmp_path, data, capsys):
    s = base(tmp_path, data, "rs", max_iters=2, batch_size=2, global_batch_size=4, **TINY_ELM)
    run(**s)
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"out_dir = {s['out_dir']!r}\nbatch_size = 4\n")  # the file's value differs from the run's
    with pytest.raises(InputError, match=r"cfg.py sets batch_size=4, but .* was trained with batch_size=2: .*"
                                         r"resume without the config file, or ask for the change with --batch_size=4"):
        import train
        train.main([str(cfg), "--init_from=resume", "--max_iters=3"])
    with pytest.raises(InputError, match="keeps its architecture"):
        run(init_from="resume", out_dir=s["out_dir"], max_iters=3, n_layer=5)
    capsys.readouterr()
    log = run(init_from="resume", out_dir=s["out_dir"], max_iters=3, batch_size=4, log_file=str(tmp_path / "rs2.jsonl"))
    assert "resume: batch_size 2 -> 4 (--batch_size=4)" in capsys.readouterr().out and log[-1]["step"] == 3
    info = checkpoint.read_info(checkpoint.latest(s["out_dir"]))["settings"]
    # what was not asked for is the checkpoint's (not train.py's defaults), and the architecture is the model's
    assert (info["batch_size"], info["global_batch_size"], info["learning_rate"]) == (4, 4, s["learning_rate"])
    assert info["qk_norm"] is True and info["head_dim"] == TINY_ELM["head_dim"] and info["n_layer"] == 3


def test_val_loss_depends_on_the_weights_alone(tmp_path, data):
    import train
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY))
    val = train.open_data(data, "val", 32)
    losses = {train.evaluate(model, train.val_set(val, False, 24, 32, 1337, None, rank, world, bs), contextlib.nullcontext(),
                             False) for bs in (1, 5, 24) for rank, world in [(0, 1)]}
    # two ranks: the sums of both halves (each padded to the same batch count) over the tokens of both
    parts = [train.val_set(val, False, 24, 32, 1337, None, r, 2, 5) for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    sums = [[(model(x, y)[1].item() * (y != -1).sum().item(), (y != -1).sum().item()) for x, y in p] for p in parts]
    two = sum(a for p in sums for a, _ in p) / sum(n for p in sums for _, n in p)
    assert max(losses) - min(losses) <= 1e-6 * max(losses) and abs(two - max(losses)) <= 1e-5 * two, (losses, two)


def test_accumulation_equals_one_big_batch_with_padding(tmp_path):
    # padding runs between documents are ignored targets and differ per micro-batch: the step still equals
    # one batch of 8 only if micro-batches are weighted by their target-token counts
    padded = make_data(tmp_path / "padded", pad_id=3)
    big = run(**base(tmp_path, padded, "big", batch_size=8, global_batch_size=8, max_iters=3))
    acc = run(**base(tmp_path, padded, "acc", batch_size=2, global_batch_size=8, max_iters=3))
    np.testing.assert_allclose(losses(acc), losses(big), rtol=1e-5)
    np.testing.assert_allclose(losses(acc, "grad_norm"), losses(big, "grad_norm"), rtol=1e-4)


def test_batches_are_a_pure_function_of_seed_and_step(data):
    import data as data_lib
    import train
    shards = data_lib.open_split(data, "train")
    batch = lambda step, micro, rank, world, batch_size: train.get_batch(  # noqa: E731
        shards, step, micro, rank, world, block_size=16, batch_size=batch_size, global_batch_size=8, seed=5)[0]
    whole = batch(7, 0, 0, 1, 8)
    # 2 ranks x 2 micro-steps x 2 rows: the same global batch, split up
    parts = torch.cat([batch(7, m, r, 2, 2) for m in range(2) for r in range(2)])
    assert torch.equal(parts, whole)
    assert not torch.equal(batch(8, 0, 0, 1, 8), batch(7, 0, 0, 1, 8))


def test_lr_schedule_openelm_and_llama():
    import train
    # OpenELM-270M (CoreNet's openelm_270M.yaml): warmup from 1e-6 over 5000 iters, cosine period 345001, min 0.1 x max
    lr = lambda it: train.lr_at(it, 5.3e-3, 5.3e-4, 5000, 1e-6, 350_001)  # noqa: E731
    assert lr(0) == 1e-6
    assert math.isclose(lr(2500), 1e-6 + 2500 * (5.3e-3 - 1e-6) / 5000)
    assert math.isclose(lr(5000), 5.3e-3)
    mid = 5000 + 345001 // 2
    assert math.isclose(lr(mid), 5.3e-4 + 0.5 * 4.77e-3 * (1 + math.cos(math.pi * (mid - 5000) / 345001)))
    assert math.isclose(lr(350_000), 5.3e-4, rel_tol=1e-6) and lr(400_000) == 5.3e-4
    # OpenLLaMA-7B (EasyLM's example script): optax warmup_cosine_decay_schedule(0, 3e-4, 2000, 250000, 3e-5)
    lr = lambda it: train.lr_at(it, 3e-4, 3e-5, 2000, 0.0, 250_000)  # noqa: E731
    assert lr(0) == 0.0 and math.isclose(lr(1000), 1.5e-4)
    assert math.isclose(lr(126_000), 3e-5 + 0.5 * 2.7e-4)
    assert lr(250_000) == 3e-5


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, data):
    s = base(tmp_path, data, "nan", max_iters=20, learning_rate=1e8, warmup_iters=0, grad_clip=0.0,
             save_interval=1, keep_last=0)
    with pytest.raises(InputError, match=r"(loss|gradient norm) became .* at step \d+"):
        run(**s)
    last = checkpoint.latest(s["out_dir"])
    assert last is not None
    model, _ = checkpoint.load_model(s["out_dir"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_divergence_advice_names_a_checkpoint_from_before_it_and_following_it_works(tmp_path, data):
    import re
    import shlex
    import train
    s = base(tmp_path, data, "div", max_iters=10, learning_rate=1e-2, min_lr=1e-2, warmup_iters=0, save_interval=2,
             keep_last=2)
    run(**s)
    with pytest.raises(InputError) as e:  # 30 blows the weights up over a few steps, saved on the way
        run(init_from="resume", out_dir=s["out_dir"], max_iters=40, learning_rate=30.0, min_lr=30.0)
    message = str(e.value)
    assert re.match(r"the (loss|gradient norm) became (nan|inf) at step \d+; stopped before the update\. "
                    r".*step_0000010 was saved before the gradient norm began to spike", message), message
    latest = checkpoint.latest(s["out_dir"])
    assert int(latest[-7:]) > 10  # the run saved diverging weights after the good ones, and kept the good ones
    assert checkpoint.read_info(latest)["healthy"] is False and checkpoint.read_info(s["out_dir"] + "/step_0000010")["healthy"]
    # resuming from the latest checkpoint, even at the good learning rate, starts from wrecked weights: blown up
    # (a loss in the thousands) or dead (uniform logits, ln(vocab)), far above where the healthy run ended
    healthy = losses([json.loads(line) for line in open(s["log_file"])])[:10]
    wrecked = run(init_from="resume", out_dir=s["out_dir"], max_iters=int(latest[-7:]) + 1, learning_rate=1e-2,
                  min_lr=1e-2, log_file=str(tmp_path / "wrecked.jsonl"), save_interval=-1)
    assert wrecked[0]["loss"] > 1.5 * healthy[-1]
    # the advice, followed word for word: finite, and back where the healthy run was
    command = re.search(r"python train.py (.*)", message).group(1)
    train.main(shlex.split(command) + ["--max_iters=20", f"--log_file={tmp_path / 'after.jsonl'}"])
    after = [json.loads(line) for line in open(tmp_path / "after.jsonl")]
    assert len(after) == 10 and all(math.isfinite(r["loss"]) for r in after) and max(losses(after)) < healthy[0]


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_keep_last_plain_names_and_load_in_one_process(tmp_path, data):
    s = base(tmp_path, data, "ck", max_iters=5, save_interval=1, keep_last=2, compile=False, **TINY_ELM)
    run(**s)
    out = s["out_dir"]
    assert sorted(d for d in os.listdir(out) if d.startswith("step_")) == ["step_0000004", "step_0000005"]
    assert open(os.path.join(out, "latest")).read().strip() == "step_0000005"
    assert not [d for d in os.listdir(out) if d.endswith(".tmp")]
    info = checkpoint.read_info(os.path.join(out, "step_0000005"))
    assert info["step"] == 5 and info["settings"]["max_iters"] == 5 and info["model_config"]["qk_norm"]
    from torch.distributed.checkpoint import FileSystemReader
    keys = FileSystemReader(os.path.join(out, "step_0000005")).read_metadata().state_dict_metadata
    model_keys = {k[len("model."):] for k in keys if k.startswith("model.")}
    assert "layers.0.attn.qkv_proj.weight" in model_keys and "tok_embeddings.weight" in model_keys
    assert not [k for k in keys if "_orig_mod" in k or "module." in k]
    model, tok = checkpoint.load_model(out, dtype=torch.bfloat16)
    assert tok is None and model.tok_embeddings.weight.dtype == torch.bfloat16 and not model.training
    assert set(model.state_dict()) == model_keys
    older, _ = checkpoint.load_model(os.path.join(out, "step_0000004"))
    assert not torch.equal(older.norm.weight, model.norm.weight.float())


def test_checkpoint_is_self_contained_with_tokenizer(tmp_path):
    import sentencepiece as spm
    data = make_data(tmp_path / "sp")
    text = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}" for i in range(300))
    open(tmp_path / "corpus.txt", "w").write(text)
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=os.path.join(data, "tokenizer"),
                                   vocab_size=VOCAB, model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    meta = json.load(open(os.path.join(data, "meta.json")))
    json.dump({**meta, "tokenizer_file": "tokenizer.model"}, open(os.path.join(data, "meta.json"), "w"))
    s = base(tmp_path, data, "tok", max_iters=1)
    run(**s)
    model, tok = checkpoint.load_model(s["out_dir"])
    assert tok is not None and tok.vocab_size == VOCAB and tok.decode(tok.encode("return x")) == "return x"
    assert os.path.isfile(os.path.join(checkpoint.latest(s["out_dir"]), "tokenizer.model"))
    # data made with another tokenizer of the same size: a finetune or a resume on it is refused, not trained on
    other = make_data(tmp_path / "other")
    open(tmp_path / "prose.txt", "w").write("\n".join(f"The {i} red birds sang over cold rivers." for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "prose.txt"), model_prefix=os.path.join(other, "tokenizer"),
                                   vocab_size=VOCAB, model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    json.dump({**meta, "tokenizer_file": "tokenizer.model"}, open(os.path.join(other, "meta.json"), "w"))
    with pytest.raises(InputError, match=r"other was tokenized with a different tokenizer than .*tok's: the model would "
                                         r"learn ids that stand for other pieces; prepare the data with the model's "
                                         r"tokenizer \(python prepare.py --tokenizer=.*step_0000001/tokenizer.model"):
        run(**base(tmp_path, other, "ft", init_from=s["out_dir"], max_iters=1))
    with pytest.raises(InputError, match=r"different tokenizer than .*step_0000001's: .* resume on the data the run "
                                         r"was trained on \(its --data_dir\)"):
        run(**{**s, "data_dir": other, "init_from": "resume", "max_iters": 2})
    run(**{**s, "init_from": "resume", "max_iters": 2})  # its own data: the same tokenizer


def test_finetune_from_our_checkpoint(tmp_path, data, capsys):
    s = base(tmp_path, data, "pre", max_iters=6)
    run(**s)
    with pytest.raises(InputError, match=r"the settings describe 7 layers x 32 \(vocab 64, query heads 4, FFN 64\) "
                                         r"but init_from=.*pre holds 2 layers x 32 \(vocab 64, query heads 4, FFN "
                                         r"64\): the architecture comes from the model"):
        run(**base(tmp_path, data, "ft", init_from=s["out_dir"], max_iters=1, n_layer=7))
    with pytest.raises(InputError, match=r"the settings describe no model \(head_dim must be even for RoPE, got 25\) "
                                         r"but init_from=.*pre holds 2 layers x 32 .*: the architecture comes from"):
        run(**base(tmp_path, data, "ft", init_from=s["out_dir"], max_iters=1, n_embd=100))  # 4 heads of 25
    with pytest.raises(InputError, match=r"the settings describe 12 layers"):  # asked for, though it is the default
        run(**base(tmp_path, data, "ft", init_from=s["out_dir"], max_iters=1, n_layer=12))
    with pytest.raises(InputError, match=r"describe no model: norm_eps=0.0 must be above 0"):
        run(**base(tmp_path, data, "ft", init_from=s["out_dir"], max_iters=1, norm_eps=0.0))
    ft = run(**base(tmp_path, data, "ft", init_from=s["out_dir"], max_iters=1))  # the model's architecture holds
    model, _ = checkpoint.load_model(str(tmp_path / "ft"))
    info = checkpoint.read_info(checkpoint.latest(str(tmp_path / "ft")))
    assert len(model.layers) == TINY["n_layer"] and info["step"] == 1
    assert info["settings"]["n_layer"] == TINY["n_layer"]  # the architecture trained, not the settings' defaults
    assert ft[0]["loss"] < run(**base(tmp_path, data, "fresh", max_iters=1))[0]["loss"]  # starts from trained weights
    # what no weight's shape depends on may change, and is what the checkpoint records and a resume keeps;
    # shorter windows keep the model's context, longer ones extend it
    def trained(name):
        return checkpoint.read_info(checkpoint.latest(str(tmp_path / name)))

    free = dict(block_size=16, rope_theta=500.0, norm_eps=1e-3, z_loss=0.5, backend="eager")
    run(**base(tmp_path, data, "free", init_from=s["out_dir"], max_iters=1, **free))
    info = trained("free")
    assert {k: info["settings"][k] for k in free} == free and info["model_config"]["block_size"] == TINY["block_size"]
    model, _ = checkpoint.load_model(str(tmp_path / "free"))
    assert model.layers[0].attn_norm.eps == 1e-3 and model.config.z_loss == 0.5 and model.config.rope_theta == 500
    assert model.config.backend == "auto"  # the kernels are the loader's choice
    run(**base(tmp_path, data, "free", init_from="resume", max_iters=2, **{**free, "z_loss": 0.25}))  # a loss term
    assert trained("free")["step"] == 2 and trained("free")["model_config"]["z_loss"] == 0.25
    with pytest.raises(InputError, match=r"already holds checkpoints"):  # a finetune into its own base's folder
        run(**base(tmp_path, data, "free", init_from=str(tmp_path / "free"), max_iters=3))
    run(**base(tmp_path, data, "long", init_from=s["out_dir"], max_iters=1, block_size=2 * TINY["block_size"]))
    assert trained("long")["model_config"]["block_size"] == 2 * TINY["block_size"]
    kw = base(tmp_path, data, "plain", init_from=str(tmp_path / "free"), max_iters=1)
    run(**{k: v for k, v in kw.items() if k != "block_size"})  # the model's context, the run's own backend
    assert trained("plain")["settings"]["block_size"] == TINY["block_size"]
    assert trained("plain")["settings"]["backend"] == "auto" and trained("plain")["settings"]["norm_eps"] == 1e-3
    capsys.readouterr()
    run(**base(tmp_path, data, "lora", init_from=s["out_dir"], max_iters=1, lora_rank=2, norm_eps=0.25, init_std=0.5))
    assert "note: init_std=0.5 changes nothing in init_from's model: it keeps init_std=0.02" in capsys.readouterr().out
    assert checkpoint.load_model(str(tmp_path / "lora"))[0].norm.eps == 0.25  # merged into the base, then rebuilt
    (tmp_path / "cfg.py").write_text("norm_eps = 1e-5\n")  # a config file's value is not a choice for this model
    import train
    with pytest.raises(InputError, match=r"cfg.py sets norm_eps=1e-05 but init_from=.*pre has norm_eps=1e-06: to "
                                         r"change it, ask with --norm_eps=1e-05"):
        train.main([str(tmp_path / "cfg.py"), *args(**base(tmp_path, data, "cfg", init_from=s["out_dir"]))])


def test_bad_paths_and_settings_are_refused(tmp_path, data):
    with pytest.raises(InputError, match="not found"):
        checkpoint.load_model(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(InputError, match="holds no checkpoint"):
        checkpoint.load_model(str(tmp_path / "empty"))
    s = base(tmp_path, data, "bad")
    for extra, msg in (({"bogus_key": 1}, "unknown setting 'bogus_key'"),
                       ({"batch_size": "many"}, "batch_size='many'"),
                       ({"learning_rate": "fast"}, "learning_rate"),
                       ({"global_batch_size": 6}, "not a multiple of batch_size"),
                       ({"parallel": "zero3"}, "parallel='zero3'"),
                       ({"init_from": "resume"}, "holds no checkpoint"),
                       ({"data_dir": str(tmp_path / "nodata")}, "prepare the data first"),
                       ({"vocab_size": 32}, "set --vocab_size=64"),
                       ({"block_size": 7000}, "longer than block_size"),
                       ({"batch_size": 10**8, "global_batch_size": 10**8}, r"a micro-step of batch_size=100000000 x "
                        r"32 tokens makes [\d,.]+ GB of logits and their gradient, more than the [\d,.]+ GB of this cpu"),
                       ({"backend": "cuda"}, r"backend='cuda' is not one of \('auto', 'triton', 'sdpa', 'eager'\)"),
                       ({"init_from": str(tmp_path / "scratch2")}, r"init_from=.*scratch2: no such folder; give "
                                                                   r"'scratch', 'resume', one of our run")):
        with pytest.raises(InputError, match=msg):
            run(**{**s, **extra})
    run(**{**s, "max_iters": 1})
    with pytest.raises(InputError, match="already holds checkpoints"):
        run(**{**s, "max_iters": 1})
    step = os.path.join(s["out_dir"], "step_0000001")
    with pytest.raises(InputError, match=r"--init_from=resume continues a run directory, and .*step_0000001 is one "
                                         r"checkpoint: to train from it, --init_from=.*step_0000001 --out_dir=<new>"):
        run(**{**s, "out_dir": step, "init_from": "resume", "max_iters": 2})
    os.remove(os.path.join(step, "train.json"))  # the only checkpoint torn: every entry point says so
    whole = r"no whole checkpoint \(step_0000001 lacks train.json or .metadata\)"
    with pytest.raises(InputError, match=r"--init_from=resume but .*bad holds " + whole + ": a save was interrupted"):
        run(**{**s, "init_from": "resume", "max_iters": 2})
    with pytest.raises(InputError, match=r"bad holds checkpoints, none of them whole \(step_0000001 lacks"):
        run(**{**s, "max_iters": 1})
    with pytest.raises(InputError, match=r"bad holds " + whole):
        checkpoint.load_model(s["out_dir"])


# ----------------------------------------------------------------------------- torchrun: DDP and FSDP2 on CPU


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(tmp_path, data, parallel):
    kw = dict(max_iters=4, global_batch_size=8, eval_interval=2, eval_windows=13, **TINY_ELM)  # 13: ranks get 7 + 6
    one = run(**base(tmp_path, data, "one", batch_size=8, **kw))
    s = base(tmp_path, data, parallel, batch_size=2, parallel=parallel, **kw)  # 2 ranks x 2 micro-steps x 2 rows
    if parallel == "fsdp":  # half, then a sharded resume: the model is built on the meta device and loaded shard-wise
        torchrun(**{**s, "max_iters": 2})
        torchrun(init_from="resume", out_dir=s["out_dir"], max_iters=4)
    else:
        torchrun(**s)
    assert_same_run(s, one, str(tmp_path / "one"))


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, data):
    plain = run(**base(tmp_path, data, "plain", max_iters=2, **TINY_ELM))
    ac = run(**base(tmp_path, data, "ac", max_iters=2, activation_checkpointing=True, **TINY_ELM))
    np.testing.assert_allclose(losses(ac), losses(plain), rtol=1e-6)
    np.testing.assert_allclose(losses(ac, "grad_norm"), losses(plain, "grad_norm"), rtol=1e-5)
    model, _ = checkpoint.load_model(str(tmp_path / "ac"))  # plain names despite the wrapped forwards
    assert "layers.0.attn.qkv_proj.weight" in model.state_dict()


def test_hugging_face_directory_loads_and_finetunes(tmp_path, data):
    import hf
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    src = Transformer(ModelConfig(**TINY))
    hf.save_model(src, str(tmp_path / "hf"))
    model, tok = checkpoint.load_model(str(tmp_path / "hf"))
    assert tok is None
    for (name, a), b in zip(model.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), name
    # finetuning from it = training from the same weights (train.py seeds torch with `seed` before building)
    log = run(**base(tmp_path, data, "hf_ft", init_from=str(tmp_path / "hf"), max_iters=2, seed=0))
    ref = run(**base(tmp_path, data, "hf_ref", max_iters=2, seed=0))
    np.testing.assert_allclose(losses(log), losses(ref), rtol=1e-6)
    # settings no weight's shape depends on apply to an imported model too (its modules are built with them)
    log = run(**base(tmp_path, data, "hf_eps", init_from=str(tmp_path / "hf"), max_iters=2, seed=0, norm_eps=0.5,
                     backend="eager"))
    assert checkpoint.read_info(checkpoint.latest(str(tmp_path / "hf_eps")))["model_config"]["backend"] == "eager"
    assert checkpoint.load_model(str(tmp_path / "hf_eps"))[0].norm.eps == 0.5 and losses(log) != losses(ref)


def test_resume_of_a_finetune_keeps_the_imported_architecture(tmp_path, data, capsys):
    # the settings' defaults are LLaMA-shaped, the imported model is TINY_ELM's: a resume must rebuild the latter
    import hf
    from model import ModelConfig, Transformer
    hf.save_model(Transformer(ModelConfig(**TINY_ELM)), str(tmp_path / "hf_elm"))
    s = base(tmp_path, data, "ft_elm", init_from=str(tmp_path / "hf_elm"), max_iters=2)
    straight = run(**{**s, "out_dir": str(tmp_path / "ft_straight"), "max_iters": 4, "log_file": str(tmp_path / "st.jsonl")})
    run(**s)
    run(init_from="resume", out_dir=s["out_dir"], max_iters=4, log_file=str(tmp_path / "ft2.jsonl"))
    resumed = [json.loads(line) for line in open(tmp_path / "ft2.jsonl")]
    assert losses(resumed) == losses(straight)[2:]
    assert checkpoint.load_model(s["out_dir"])[0].config.qk_norm
    # settings that change nothing get a note; the model's multipliers spelt another way (the export keeps per-layer
    # lists, a recipe has the pair) are not that
    import train
    assert hf.load_config(tmp_path / "hf_elm").ffn_multipliers != TINY_ELM["ffn_multipliers"]
    sources = {}
    settings = train.settings_for(args(init_from=str(tmp_path / "hf_elm"), n_head=6,
                                       ffn_multipliers=TINY_ELM["ffn_multipliers"]), sources)
    capsys.readouterr()
    train.model_settings(settings, sources, None)
    out = capsys.readouterr().out
    assert "note: n_head=6 changes nothing in init_from's model: it keeps n_head=12" in out and "multipliers" not in out


def test_chat_rows_visit_every_row_once_per_epoch_and_mask_targets():
    import train
    n, T = 10, 6
    tokens = np.arange(n * T, dtype=np.uint16).reshape(n, T)  # row r holds r*T .. r*T+T-1
    mask = np.zeros((n, T), dtype=np.uint8)
    mask[:, 3:5] = 1  # "assistant" tokens 3 and 4 of each row
    rows = lambda step, rank=0, world=1, batch_size=5: train.get_rows(  # noqa: E731
        (tokens, mask), step, 0, rank, world, batch_size=batch_size, global_batch_size=5, seed=3)
    rows_of = lambda step: (rows(step)[0][:, 0] // T).tolist()  # noqa: E731
    epoch0, epoch1 = rows_of(0) + rows_of(1), rows_of(2) + rows_of(3)
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and epoch0 != epoch1
    split = torch.cat([rows(1, r, 5, 1)[0] for r in range(5)])  # 5 ranks x 1 row: the same global batch
    assert torch.equal(split, rows(1)[0])
    x, y = rows(0)
    assert torch.equal(y[:, 2:4], x[:, 3:5])  # position t predicts token t+1 where token t+1 is trained
    assert (y[:, :2] == -1).all() and (y[:, 4:] == -1).all()


def test_linear_schedule_and_epochs_with_warmup_ratio(tmp_path, capsys):
    import train
    # Open-Instruct's: linear from learning_rate to min_lr after the warmup
    lr = lambda it: train.lr_at(it, 1e-2, 0.0, 5, 0.0, 105, "linear")  # noqa: E731
    assert math.isclose(lr(5), 1e-2) and math.isclose(lr(55), 5e-3) and lr(105) == 0.0
    assert math.isclose(lr(30), 1e-2 * 75 / 100)
    # epochs and warmup_ratio become step counts from the number of chat rows: 10 rows, 4 per step, 3 epochs
    d = tmp_path / "rows"
    d.mkdir()
    (np.arange(10 * 8) % VOCAB).astype(np.uint16).tofile(d / "train.bin")
    np.ones(10 * 8, dtype=np.uint8).tofile(d / "train.mask.bin")
    split = {"files": ["train.bin"], "mask_files": ["train.mask.bin"], "documents": 10, "rows": 10, "tokens": 80}
    json.dump({"tokenizer": "sentencepiece", "tokenizer_file": None, "vocab_size": VOCAB, "dtype": "uint16", "bos_id": 1,
               "eos_id": 2, "pad_id": None, "source": "handmade", "splits": {"train": split}, "layout": "rows",
               "seq_len": 8, "packing": "padded", "chat_format": "messages"}, open(d / "meta.json", "w"))
    with pytest.raises(InputError, match=r"--max_iters=4 would not be used: epochs=3.0 sets max_iters from the number "
                                         r"of chat rows; add --epochs=0 to set max_iters yourself"):
        run(**base(tmp_path, str(d), "ep", epochs=3.0, warmup_ratio=0.2))  # a count asked for is never dropped
    with pytest.raises(InputError, match=r"--warmup_iters=2 would not be used: warmup_ratio=0.2 sets warmup_iters"):
        run(**base(tmp_path, str(d), "ep", warmup_ratio=0.2))
    (tmp_path / "ep.py").write_text("max_iters = 4\nwarmup_iters = 2\nlr_decay_iters = 8\n")  # a recipe's counts
    counts = ("max_iters", "warmup_iters", "lr_decay_iters")
    kw = {k: v for k, v in base(tmp_path, str(d), "ep", epochs=3.0, warmup_ratio=0.2, lr_schedule="linear",
                                min_lr=0.0, eval_interval=4).items() if k not in counts}
    train.main([str(tmp_path / "ep.py"), *args(**kw)])
    log = [json.loads(line) for line in open(kw["log_file"])]
    assert [r["step"] for r in log] == list(range(1, 9))  # ceil(3 * 10 / 4) = 8 steps
    lrs = [r["lr"] for r in log]  # warmup ceil(0.2 * 8) = 2 steps from warmup_init_lr, then linear to 0 at step 8
    assert math.isclose(lrs[2], 3e-3) and math.isclose(lrs[5], 3e-3 * 3 / 6) and lrs[1] < lrs[2]
    out = capsys.readouterr().out  # the config file's step counts (4, 2 and 8) are replaced, and the run says so
    assert ("note: epochs=3.0 sets max_iters=8 (not the 4 of the settings)" in out and
            "note: warmup_ratio=0.2 sets warmup_iters=2" not in out)  # 2 either way: no note
    assert f"note: {d} has no val rows: no val loss" in out  # chat rows: no val split at all
    saved = checkpoint.read_info(checkpoint.latest(str(tmp_path / "ep")))["settings"]  # the counts that trained
    assert (saved["max_iters"], saved["warmup_iters"], saved["lr_decay_iters"]) == (8, 2, 8)
    train.main([str(tmp_path / "ep.py"), *args(init_from="resume", out_dir=str(tmp_path / "ep"), epochs=6.0)])
    assert checkpoint.read_info(checkpoint.latest(str(tmp_path / "ep")))["step"] == 15  # ceil(6 * 10 / 4)
    capsys.readouterr()
    train.main([str(tmp_path / "ep.py"), *args(init_from="resume", out_dir=str(tmp_path / "ep"), epochs=6.0)])
    assert "step_0000015 is at step 15 = max_iters: the run is done" in capsys.readouterr().out  # and exits 0
    with pytest.raises(InputError, match=r"resumes at step 15, past max_iters=8"):
        train.main([str(tmp_path / "ep.py"), *args(init_from="resume", out_dir=str(tmp_path / "ep"), epochs=3.0)])
    with pytest.raises(InputError, match=r"the chat rows of .*rows are 8 tokens, longer than block_size=4: prepare "
                                         r"the data with --seq_len=4 or less, or raise --block_size to 8$"):
        run(**{k: v for k, v in base(tmp_path, str(d), "short", epochs=1.0, block_size=4).items() if k not in counts})
    with pytest.raises(InputError, match="--epochs needs chat"):  # a token stream has no epochs to count
        train.schedule_of(train.SimpleNamespace(**{**train.settings_for([], {}), "epochs": 1.0}), None)


def test_bf16_on_a_cpu_without_fast_bf16_trains_in_float32(monkeypatch, capsys):
    """An AVX2-only CPU emulates bf16 matmuls (65x slower than fp32 on one): train.py falls back to float32
    there, with a note, and keeps bf16 autocast where the CPU has it."""
    import train
    monkeypatch.setattr(train, "fast_cpu_bf16", lambda: False)
    dtype, autocast, scaler = train.precision("bfloat16", "cpu", False)
    assert dtype == torch.float32 and not isinstance(autocast, torch.autocast) and not scaler.is_enabled()
    assert "no fast bfloat16" in capsys.readouterr().out
    monkeypatch.setattr(train, "fast_cpu_bf16", lambda: True)
    dtype, autocast, _ = train.precision("bfloat16", "cpu", False)
    assert dtype == torch.bfloat16 and isinstance(autocast, torch.autocast)
    capsys.readouterr()
    dtype, autocast, scaler = train.precision("float16", "cpu", False)  # emulated on every CPU: 50x slower
    assert dtype == torch.float32 and not isinstance(autocast, torch.autocast) and not scaler.is_enabled()
    assert "note: a CPU has no fast float16: training in float32" in capsys.readouterr().out


MALLINFO = """
import ctypes, sys, torch, train
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
took = train.hold_freed_memory() if sys.argv[1] == "held" else None
before = libc.mallinfo2().hblkhd
x = torch.ones(64 << 18)  # 64 MB: elm_tiny's fp32 logits (8 x 256 x 8192), above glibc's largest mmap threshold
alive = libc.mallinfo2().hblkhd - before
del x
print(took, alive >> 20, libc.mallinfo2().fordblks >> 20)
"""
GLIBC = platform.libc_ver()


@pytest.mark.skipif(GLIBC[0] != "glibc" or tuple(map(int, GLIBC[1].split("."))) < (2, 33),
                    reason="glibc's allocator settings, read back with mallinfo2 (glibc 2.33)")
def test_hold_freed_memory_keeps_a_large_block_for_the_next_step():
    """glibc's default serves a 64 MB block with its own mmap and unmaps it on free (the next step faults it in
    again); after hold_freed_memory it comes from the heap and stays there, free for reuse. Variables a user set
    for the same win: the function leaves them alone."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}

    def mallinfo(mode, **env):
        out = subprocess.run([sys.executable, "-c", MALLINFO, mode], cwd=ROOT, capture_output=True, text=True,
                             env={**clean, **env}, check=True).stdout.split()
        return out[0], int(out[1]), int(out[2])
    _, mapped, _ = mallinfo("default")
    if mapped < 64:
        pytest.skip("this glibc already serves a 64 MB block from the heap by default: no contrast to test")
    took, mapped, free = mallinfo("held")
    assert took == "True" and mapped == 0 and free >= 64
    assert mallinfo("held", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"
    assert mallinfo("held", MALLOC_MMAP_MAX_="65536")[0] == "False"
    assert mallinfo("held", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")[0] == "False"


def test_train_holds_freed_memory_on_a_cpu(tmp_path, data, monkeypatch):
    """train.py applies the allocator setting itself when it runs on a CPU, so `python train.py` gets it."""
    import train
    calls = []
    monkeypatch.setattr(train, "hold_freed_memory", lambda: calls.append(1))
    run(**base(tmp_path, data, "held", max_iters=1))
    assert calls == [1]


def test_training_and_evaluation_let_the_logits_go():
    """The logits (B x T x vocab) are a step's largest tensor, and backward does not need them: the loss keeps
    its own gradient. forward_backward must not hold them through backward (the logits of elm_270m's micro-batch
    of 16 x 2048 are 2 GB in bf16), nor evaluate while the next batch makes its own."""
    import weakref
    import train
    refs, alive = [], []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_embeddings = torch.nn.Embedding(VOCAB, 3)  # evaluate reads the device from it

        def forward(self, x, y):
            alive.append(bool(refs) and refs[-1]() is not None)  # the previous batch's logits, if still held
            logits = self.tok_embeddings(x)  # saves x for backward, not the logits
            refs.append(weakref.ref(logits))
            loss = logits.sum()
            if loss.requires_grad:
                loss.register_hook(lambda g: alive.append(refs[-1]() is not None))
            return logits, loss
    batch = (torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train.forward_backward(Model(), [batch, batch], contextlib.nullcontext(), scaler, 1, False, False)
    assert alive == [False, False, False, False]  # at each forward and in each backward
    refs.clear(), alive.clear()
    train.evaluate(Model(), [batch, batch], contextlib.nullcontext(), False)
    assert alive == [False, False]


def test_a_checkpoint_that_does_not_fit_is_refused_before_writing(tmp_path, data, monkeypatch):
    """A disk too full for the next checkpoint: one line with the sizes and the step to resume from, and no torn
    folder (a full disk met half-way ended in torch's `unexpected pos` traceback and a .tmp folder)."""
    import shutil
    run(**base(tmp_path, data, "full", max_iters=1))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(InputError, match=r"not enough space in .*full for the checkpoint of step 2: it needs 0\.\d\d GB "
                                         r"and 0\.00 GB are free; .* resume from .*step_0000001"):
        run(**base(tmp_path, data, "full", max_iters=2, init_from="resume"))
    assert sorted(os.listdir(tmp_path / "full")) == [".lock", "latest", "step_0000001"]


def test_resume_refuses_data_prepared_again_under_the_same_name(tmp_path):
    """A resume continues on the data it was trained on: the data folder rebuilt with other contents since the
    checkpoint (its meta.json no longer the copy the checkpoint keeps) is refused, not trained on silently."""
    d = make_data(str(tmp_path / "data"), seed=0)
    run(**base(tmp_path, d, "r", max_iters=1))
    make_data(str(tmp_path / "data"), n_tokens=9000, seed=1)  # prepared again, other documents
    with pytest.raises(InputError, match=r"data changed since .*step_0000001 was saved \(its meta.json differs"):
        run(**base(tmp_path, d, "r", max_iters=2, init_from="resume"))
    make_data(str(tmp_path / "data"), seed=0)  # the same data again: the resume goes on
    assert run(**base(tmp_path, d, "r", max_iters=2, init_from="resume", log_file=str(tmp_path / "r2.jsonl")))


def test_notes_and_a_log_file_through_a_link(tmp_path, data, capsys):
    """Settings that do less than they say get a note (fsdp in one process, a min_lr above the learning rate); the
    log is appended to, so a link (or a pipe) is written through, not refused as an atomic write's output would be."""
    link = tmp_path / "link.jsonl"
    os.symlink(tmp_path / "real.jsonl", link)
    run(**base(tmp_path, data, "notes", max_iters=1, parallel="fsdp", learning_rate=1e-3, min_lr=1e-2,
               log_file=str(link)))
    out, err = capsys.readouterr()
    assert "note: parallel='fsdp' shards under torchrun; one process trains the whole model" in err
    assert "note: min_lr=0.01 is above learning_rate=0.001: the schedule rises to min_lr" in out
    assert link.is_symlink() and json.loads((tmp_path / "real.jsonl").read_text().splitlines()[0])["step"] == 1
