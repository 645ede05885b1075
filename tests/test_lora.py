# LoRA (lora.py) and LoRA runs of train.py: the start changes nothing, only adapters train and are saved, the
# merge equals base + adapters, a LoRA run resumes exactly and DDP/FSDP2 under torchrun match one process.
import json
import os
import shutil

import pytest
import torch

import checkpoint
import lora
from model import ModelConfig, Transformer
from conftest import ROOT, TINY, TINY_ELM, assert_same_run, base, losses, make_data, run, torchrun
from configurator import InputError  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data):
    """A briefly trained tiny OpenELM-style checkpoint of ours: the frozen base of every LoRA run here."""
    tmp = tmp_path_factory.mktemp("pre")
    s = base(tmp, data, "pre", max_iters=6, **TINY_ELM)
    run(**s)
    return s["out_dir"]


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**TINY_ELM, **kw}))


def test_adapters_start_as_identity_and_only_they_train():
    model, idx = tiny(), torch.randint(0, 64, (2, 16))
    ref = model(idx).detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora.add(model, rank=4, alpha=8, dropout=0.1)
    lora.init(model, seed=1)
    model.train()
    assert torch.equal(model(idx), ref)  # B = 0: bit for bit the base model, dropout or not
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * len(model.layers)  # A and B on the four projections of every block
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95))
    for _ in range(3):
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())  # the base did not move
    assert not torch.equal(model(idx), ref)  # the adapters did
    assert all(sd[k].abs().sum() > 0 for k in sd if k.endswith("lora_B"))


def test_merge_equals_base_plus_adapters():
    model = tiny(n_embd=48)
    lora.add(model, rank=4, alpha=16, dropout=0.0, targets="qkv_proj,down_proj")
    lora.init(model, seed=3)
    with torch.no_grad():
        for _, m in lora.adapters(model):
            m.lora_B.normal_(0, 0.05)  # a trained-looking update (B = 0 would make the test vacuous)
    model.eval()
    idx = torch.randint(0, 64, (2, 20))
    with_adapters = model(idx).detach()
    adapters = lora.adapters(model)  # the modules keep A, B and (after merge) the merged weight
    merged = lora.merge(model)
    assert not lora.adapters(merged) and set(merged.state_dict()) == set(tiny().state_dict())
    torch.testing.assert_close(merged(idx), with_adapters, rtol=1e-5, atol=1e-5)
    ref = tiny(n_embd=48)  # the merged weight is W + (alpha / r) B A where there were adapters, W elsewhere
    assert torch.equal(merged.layers[0].attn.out_proj.weight, ref.layers[0].attn.out_proj.weight)
    for i, (_, m) in enumerate(adapters):
        W = (ref.layers[i // 2].attn.qkv_proj if i % 2 == 0 else ref.layers[i // 2].ffn.down_proj).weight
        assert torch.equal(m.weight, W + (m.lora_B @ m.lora_A) * (16 / 4))


def test_init_is_a_function_of_seed_and_name():
    a, b = tiny(seed=0), tiny(seed=5)  # different bases, same adapters
    for m in (a, b):
        lora.add(m, rank=2, alpha=2)
        lora.init(m, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if ".lora_" in k)
    assert not torch.equal(sa["layers.0.attn.qkv_proj.lora_A"], sa["layers.1.attn.qkv_proj.lora_A"])


def test_bad_lora_settings_are_refused(tmp_path, data, pretrained):
    with pytest.raises(InputError, match="lora_targets"):
        lora.add(tiny(), rank=4, alpha=8, targets="q_proj,v_proj")  # Hugging Face's split names are not ours
    with pytest.raises(InputError, match="lora_rank"):
        lora.add(tiny(), rank=0, alpha=8)
    with pytest.raises(InputError, match="pretrained model"):
        run(**base(tmp_path, data, "scratch", lora_rank=4))


def test_lora_run_saves_only_adapters_and_loads_merged(tmp_path, data, pretrained):
    s = base(tmp_path, data, "lora", init_from=pretrained, lora_rank=4, lora_alpha=8.0, lora_dropout=0.0,
             max_iters=3, learning_rate=1e-2)
    run(**s)
    ck = checkpoint.latest(s["out_dir"])
    from torch.distributed.checkpoint import FileSystemReader
    keys = [k for k in FileSystemReader(ck).read_metadata().state_dict_metadata if k.startswith("model.")]
    assert keys and all(".lora_" in k for k in keys)  # no base weight was written
    info = checkpoint.read_info(ck)
    assert info["lora"]["rank"] == 4 and info["lora_base"] == os.path.abspath(checkpoint.latest(pretrained))
    merged, _ = checkpoint.load_model(s["out_dir"])
    base_model, _ = checkpoint.load_model(pretrained)
    # rebuild base + adapters by hand from the saved adapter tensors
    lora.add(base_model, **info["lora"])
    sd = {k: v for k, v in base_model.state_dict().items() if ".lora_" in k}
    import torch.distributed.checkpoint as dcp
    dcp.load({"model": sd}, checkpoint_id=ck, no_dist=True)
    idx = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), base_model.eval()(idx), rtol=1e-5, atol=1e-5)
        assert (merged(idx) - checkpoint.load_model(pretrained)[0](idx)).abs().max() > 1e-4  # it did learn
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "export.py", f"--init_from={s['out_dir']}", f"--out={tmp_path / 'exp'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    import hf  # the export of a LoRA run is an ordinary model folder holding the merged weights
    with torch.no_grad():
        assert torch.equal(hf.load_model(str(tmp_path / "exp"))(idx), merged(idx))


def test_lora_resume_is_exact(tmp_path, data, pretrained):
    kw = dict(init_from=pretrained, lora_rank=4, lora_alpha=8.0, lora_dropout=0.1, dtype="bfloat16")
    straight = run(**base(tmp_path, data, "straight", max_iters=6, **kw))
    run(**base(tmp_path, data, "halves", max_iters=3, **kw))
    run(init_from="resume", out_dir=str(tmp_path / "halves"), max_iters=6, log_file=str(tmp_path / "halves2.jsonl"))
    second = [json.loads(line) for line in open(tmp_path / "halves2.jsonl")]
    assert losses(straight)[3:] == losses(second)  # bit-identical, dropout's RNG included
    for change in (dict(lora_rank=8), dict(lora_targets="out_proj"), dict(lora_alpha=2.0)):  # not silently dropped
        with pytest.raises(ValueError, match="keeps its architecture and adapters"):
            run(init_from="resume", out_dir=str(tmp_path / "halves"), max_iters=8, **change)
    with pytest.raises(ValueError, match=r"lora_rank=1000 exceeds \d+, the highest rank any adapted matrix can have"):
        run(**base(tmp_path, data, "too_wide", init_from=pretrained, lora_rank=1000))


def test_lora_from_a_hugging_face_directory(tmp_path, data):
    import hf
    hf.save_model(tiny(**TINY), str(tmp_path / "hf"))
    s = base(tmp_path, data, "hf_lora", init_from=str(tmp_path / "hf"), lora_rank=2, max_iters=2)
    log = run(**s)
    assert len(losses(log)) == 2
    merged, _ = checkpoint.load_model(s["out_dir"])
    assert checkpoint.read_info(checkpoint.latest(s["out_dir"]))["lora_base"] == str(tmp_path / "hf")
    assert set(merged.state_dict()) == set(hf.load_model(str(tmp_path / "hf")).state_dict())


def test_lora_checkpoint_merges_in_float32_and_can_be_finetuned_further(tmp_path, data, pretrained):
    s = base(tmp_path, data, "lora", init_from=pretrained, lora_rank=4, lora_alpha=8.0, max_iters=2, learning_rate=1e-2)
    run(**s)
    full, _ = checkpoint.load_model(s["out_dir"])
    half, _ = checkpoint.load_model(s["out_dir"], dtype=torch.bfloat16)
    for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16), b), name  # merge in fp32, then one rounding
    # a LoRA run as init_from: its merged weights are the starting point, for full training or new adapters
    for name, kw in (("full", {}), ("again", dict(lora_rank=2))):
        log = run(**base(tmp_path, data, name, init_from=s["out_dir"], max_iters=1, learning_rate=1e-9, **kw))
        x, y = _first_batch(data)
        with torch.no_grad():
            _, loss = full.train()(x, y)
        assert abs(log[0]["loss"] - loss.item()) < 1e-4, name


def _first_batch(data):
    """train.py's first batch under base()'s settings (seed 1337, 4 rows of 32)."""
    import data as data_lib
    import train
    return train.get_batch(data_lib.open_split(data, "train"), 0, 0, 0, 1, block_size=32, batch_size=4,
                           global_batch_size=4, seed=1337)


def test_lora_fsdp_resume_on_a_hugging_face_base(tmp_path, data):
    # the base comes through hf.py with real weights: the sharded resume must not build it on the meta device
    import hf
    hf.save_model(tiny(seed=3), str(tmp_path / "hf"))
    kw = dict(init_from=str(tmp_path / "hf"), lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, global_batch_size=8,
              learning_rate=1e-2, **TINY_ELM)
    one = run(**base(tmp_path, data, "one", batch_size=8, max_iters=4, **kw))
    s = base(tmp_path, data, "fsdp", batch_size=4, parallel="fsdp", max_iters=2, **kw)
    torchrun(**s)
    torchrun(init_from="resume", out_dir=s["out_dir"], max_iters=4)
    assert_same_run(s, one, str(tmp_path / "one"))


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_lora_torchrun_two_processes_match_one(tmp_path, data, pretrained, parallel):
    kw = dict(init_from=pretrained, lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, max_iters=3, global_batch_size=8,
              learning_rate=1e-2)
    one = run(**base(tmp_path, data, "one", batch_size=8, **kw))
    s = base(tmp_path, data, parallel, batch_size=2, parallel=parallel, **kw)
    torchrun(**s)
    assert_same_run(s, one, str(tmp_path / "one"))  # the merged models too


def test_weight_diff_refuses_adapters(tmp_path, data, pretrained):
    import weight_diff
    s = base(tmp_path, data, "lora", init_from=pretrained, lora_rank=2, max_iters=1)
    run(**s)
    with pytest.raises(InputError, match="holds LoRA adapters, not a model: export it merged"):
        weight_diff.make(pretrained, s["out_dir"], str(tmp_path / "diff"))


def test_adapters_refuse_a_base_that_changed(tmp_path, data):
    """A LoRA run keeps the path of its base and an id of its weight files: with another model trained into that
    path since, loading the run (sample, eval, export) and resuming it are refused, not merged onto the wrong base."""
    import checkpoint
    s = base(tmp_path, data, "base", max_iters=2, **TINY_ELM)
    run(**s)
    run(**base(tmp_path, data, "lr", max_iters=2, init_from=s["out_dir"], lora_rank=2))
    checkpoint.load_model(str(tmp_path / "lr"))  # the base as it was: fine
    shutil.rmtree(s["out_dir"])
    run(**{**s, "seed": 7})  # another model at the same path, the same step folders
    with pytest.raises(ValueError, match=r"holds LoRA adapters trained on .*base.*, but the model there has changed"):
        checkpoint.load_model(str(tmp_path / "lr"))
    with pytest.raises(ValueError, match="but the model there has changed since"):
        run(init_from="resume", out_dir=str(tmp_path / "lr"), max_iters=4, log_file=str(tmp_path / "lr2.jsonl"))
