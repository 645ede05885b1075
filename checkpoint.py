"""
Our checkpoints, saved and loaded here and nowhere else: train.py saves and resumes through this file;
sample.py, eval.py and export.py load through load_model(), which also reads Hugging Face and Meta directories
(through hf.py) and LoRA runs (their base with the adapters merged in).

    out/<run>/latest              the name of the newest complete checkpoint, e.g. "step_0002000"
    out/<run>/step_0002000/
        .metadata, *.distcp       torch.distributed.checkpoint (DCP) of {"model", "optim"}: every rank
                                  writes only the shards it holds, so a 13B FSDP run never gathers the model
        train.json                step, ModelConfig, the full training settings, world size, last val loss
        rng/rank_00000.pt         each rank's torch RNG states
        meta.json, tokenizer.*    copied from data_dir, so the folder alone is enough for sample.py/eval.py

Weights are stored under their plain module names (layers.0.attn.qkv_proj.weight), never with DDP's
`module.` or torch.compile's `_orig_mod.` prefixes. DCP reads them back in one process without a
process group, or resharded onto any number of ranks. A checkpoint is written into a temporary
folder and renamed into place, and `latest` is replaced atomically, so a crash never leaves a torn one.
"""
import dataclasses
import hashlib
import os
import pickle
import re
import shutil
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.utils._pytree import tree_leaves

import data
import hf
from configurator import InputError
from files import atomic_write, read_json, write_json
from model import ModelConfig, Transformer
from tokenizer import Tokenizer, fits, tokenizer_file

# Frozen parameters are not saved: a LoRA run stores its adapters and their optimizer state, and names the
# base it started from (train.json "lora_base"); a full run freezes nothing, so this changes nothing there.
_TRAINABLE = StateDictOptions(ignore_frozen_params=True)
_TRAINABLE_LOAD = StateDictOptions(ignore_frozen_params=True, strict=False)  # dcp.load already insists on every key


def _distributed():
    return dist.is_available() and dist.is_initialized()


def _rank():
    return dist.get_rank() if _distributed() else 0


def _barrier():
    if _distributed():
        dist.barrier()


def _dcp(fn, state, path):
    # In one process DCP warns that it "assumes" one process even with no_dist=True: that is the intent here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        return fn(state, checkpoint_id=path, no_dist=not _distributed())


def step_dir(out_dir, step):
    return os.path.join(out_dir, f"step_{step:07d}")


def is_checkpoint(path):
    """A folder with a train.json and a DCP .metadata."""
    return os.path.isfile(os.path.join(path, "train.json")) and os.path.isfile(os.path.join(path, ".metadata"))


def missing(path):
    """What a checkpoint folder lacks, as a phrase, or None when every file its metadata and train.json name is
    there at its full size (a kill during a save or a prune can leave a folder torn). No data is read."""
    if not is_checkpoint(path):
        return "train.json or .metadata"
    try:
        storage = dcp.FileSystemReader(path).read_metadata().storage_data
        info = read_json(os.path.join(path, "train.json"), "")
    except (InputError, OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        return f"a readable .metadata and train.json ({type(e).__name__})"
    need = {}
    for s in storage.values():
        need[s.relative_path] = max(need.get(s.relative_path, 0), s.offset + s.length)
    for f in info.get("checksums", {}):
        need.setdefault(f, 0)
    for f, size in sorted(need.items()):
        full = os.path.join(path, f)
        if not os.path.isfile(full) or os.path.getsize(full) < size:
            return f"{f} ({'missing' if not os.path.isfile(full) else 'truncated'})"
    return None


def occupant(folder):
    """What a folder already holds that a new output written into it would mix with, or None: "checkpoints" (step
    folders, or a step folder itself), "prepared data" (meta.json) or "a model" (Hugging Face's or Meta's)."""
    if step_folders(folder) or os.path.isfile(os.path.join(folder, "train.json")):
        return "checkpoints"
    if os.path.isfile(os.path.join(folder, "meta.json")):
        return "prepared data"
    return "a model" if hf.is_hf_dir(folder) else None


def step_folders(out_dir):
    """The step_* folders of a run directory, newest first."""
    if not os.path.isdir(out_dir):
        return []
    return [os.path.join(out_dir, d) for d in sorted(os.listdir(out_dir), reverse=True)
            if d.startswith("step_") and os.path.isdir(os.path.join(out_dir, d))]


def torn(out_dir):
    """What the newest step folders of a run directory lack, as a phrase ("step_0000020 lacks train.json; ..."), or
    None when it has no step folders: why a run directory with checkpoints has no whole one."""
    folders = step_folders(out_dir)
    return "; ".join(f"{os.path.basename(p)} lacks {missing(p)}" for p in folders[:2]) + \
        ("; ..." if len(folders) > 2 else "") if folders else None


def latest(out_dir, quiet=False):
    """The newest complete checkpoint of a run directory, or None: the one `latest` names, or, when that is
    missing, unreadable or names a folder that is gone or torn, the newest complete step folder (with a note)."""
    pointer = os.path.join(out_dir, "latest")
    named = None
    if os.path.isfile(pointer):
        name = open(pointer, errors="replace").read().strip()
        if re.fullmatch(r"step_\d+", name):
            named = os.path.join(out_dir, name)
            if missing(named) is None:
                return named
    for path in step_folders(out_dir):
        if missing(path) is None:
            if not quiet and (named or os.path.isfile(pointer)):
                what = (f"names {os.path.basename(named)}, which is {'incomplete' if os.path.isdir(named) else 'not there'}"
                        if named else "names no step folder")
                print(f"note: {pointer} {what}: using {path}, the newest complete checkpoint", file=sys.stderr)
            return path
    return None


def resolve(path):
    """A run directory -> its latest checkpoint; a checkpoint folder -> itself; a step folder that is not a whole
    checkpoint -> refused, naming the newest intact one; anything else -> None."""
    if is_checkpoint(path):
        return path
    run, name = os.path.split(os.path.normpath(path))
    ours = os.path.isdir(path) and any(f.endswith(".distcp") or f in ("train.json", ".metadata") for f in os.listdir(path))
    if re.fullmatch(r"step_\d+", name) and ours:  # a torn save or a hand-deleted file
        other = newest_intact(run, but=path)
        raise InputError(f"checkpoint {path} is damaged (it lacks {missing(path)}): "
                         + (f"use {other}, the newest intact one" if other else "no other step of its run is intact"))
    return latest(path)


def newest_intact(out_dir, but=None):
    """The newest checkpoint of a run directory whose files are all there and match their checksums, skipping
    `but`; None if there is none."""
    for path in step_folders(out_dir):
        if os.path.abspath(path) != os.path.abspath(but or "") and missing(path) is None and not _corrupt(path):
            return path
    return None


def read_info(path):
    return read_json(os.path.join(path, "train.json"), "the checkpoint is damaged: resume from an older step folder")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _corrupt(path, share=(0, 1)):
    """The first file of a checkpoint whose bytes do not match the checksum train.json keeps for it, or None.
    share=(rank, world): check only every world-th file, starting at rank (ranks split the reading)."""
    sums = read_info(path).get("checksums", {})  # checkpoints older than checksums have none to check
    for f in sorted(sums)[share[0]::share[1]]:
        if _sha256(os.path.join(path, f)) != sums[f]:
            return f
    return None


def verify(path):
    """Refuse, with one line, a checkpoint folder that is torn or whose files do not match their checksums, naming
    the newest intact checkpoint beside it. Collective under torch.distributed: the ranks share the hashing."""
    what = missing(path)
    bad = None if what else _corrupt(path, (_rank(), dist.get_world_size()) if _distributed() else (0, 1))
    if _distributed():  # every rank learns of any rank's find, so all raise together
        flags = [None] * dist.get_world_size()
        dist.all_gather_object(flags, bad)
        bad = next((f for f in flags if f), None)
    if what or bad:
        problem = f"lacks {what}" if what else f"is damaged: {bad} does not match its checksum in train.json"
        other = newest_intact(os.path.dirname(os.path.abspath(path)), but=path)
        fix = (f"the newest intact checkpoint is {other}: delete {path} (then --init_from=resume takes {other}), or "
               f"load {other} directly" if other else "there is no intact checkpoint beside it: train again")
        raise InputError(f"checkpoint {path} {problem}; {fix}")


def model_config(info):
    """ModelConfig from train.json (JSON turned the multiplier tuples into lists; turn them back). The kernel
    backend is the loader's to pick, not the trainer's: it is left at "auto" (one trained with "triton" on a GPU
    runs on a CPU too)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"backend"}
    try:
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in info["model_config"].items() if k in fields}
        return ModelConfig(**kw)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise InputError(f"the model_config in train.json is damaged ({type(e).__name__}: {e}): the checkpoint "
                         f"cannot be rebuilt; use an older step folder")


# ----------------------------------------------------------------------------- save


def save(out_dir, step, model, optimizer, settings, data_dir=None, keep_last=3, extra=None):
    """Write out_dir/step_XXXXXXX. Collective: every rank calls it. `model` is the unwrapped module
    (FSDP2's fully_shard works in place, so that is the sharded model itself); `settings` is the dict
    configurator.configure() returned."""
    rank, final = _rank(), step_dir(out_dir, step)
    tmp = os.path.join(out_dir, "." + os.path.basename(final) + ".tmp")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_TRAINABLE)
    # the bytes the save will write against the disk's free space: a full disk met half-way ends in a library's
    # traceback and a torn folder; refused here, the run stops with its newest checkpoint whole. FSDP shards are
    # summed over the ranks; a replicated tensor (DDP) is written once, so rank 0 counts it; rank 0's disk decides
    # for every rank, so all raise together
    os.makedirs(out_dir, exist_ok=True)
    tensors = [t for t in tree_leaves((model_sd, optim_sd)) if isinstance(t, torch.Tensor)]
    need = sum(t.to_local().nbytes for t in tensors if hasattr(t, "to_local"))
    need += sum(t.nbytes for t in tensors if not hasattr(t, "to_local")) if rank == 0 else 0
    free = shutil.disk_usage(out_dir).free
    if _distributed():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (need, free))
        need, free = sum(p[0] for p in parts), parts[0][1]
    if need > free:
        raise InputError(f"not enough space in {out_dir} for the checkpoint of step {step}: it needs "
                         f"{need / 1e9:.2f} GB and {free / 1e9:.2f} GB are free; free some (older step folders can go) "
                         f"and resume from {latest(out_dir, quiet=True) or 'the start'}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that crashed half-way
        os.makedirs(os.path.join(tmp, "rng"))
    _barrier()
    _dcp(dcp.save, {"model": model_sd, "optim": optim_sd}, tmp)
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    rng_file = os.path.join("rng", f"rank_{rank:05d}.pt")
    torch.save(rng, os.path.join(tmp, rng_file))
    _barrier()
    # a checksum of every file, each rank hashing what it wrote (DCP names its files __<rank>_<n>.distcp), so a file
    # overwritten with garbage of the same size is found on load
    mine = [rng_file] + [f for f in os.listdir(tmp) if f.startswith(f"__{rank}_")] + [".metadata"] * (rank == 0)
    sums = {f: _sha256(os.path.join(tmp, f)) for f in mine}
    if _distributed():
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, sums)
        sums = {f: h for part in every for f, h in part.items()}
    if rank == 0:
        if data_dir and os.path.isfile(os.path.join(data_dir, "meta.json")):  # checksummed too: sample.py needs them
            meta = data.read_meta(data_dir)
            for f in ["meta.json"] + (meta.get("tokenizer_files") or [meta.get("tokenizer_file")]):
                if f and os.path.isfile(os.path.join(data_dir, f)):
                    shutil.copy2(os.path.join(data_dir, f), tmp)
                    sums[f] = _sha256(os.path.join(tmp, f))
        info = {"step": step, "model_config": dataclasses.asdict(model.config), "settings": settings,
                "world_size": dist.get_world_size() if _distributed() else 1, **(extra or {}), "checksums": sums}
        write_json(os.path.join(tmp, "train.json"), info)
        if os.path.isdir(final):  # the same step saved again (a run resumed from its final checkpoint)
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write(os.path.join(out_dir, "latest"), os.path.basename(final) + "\n")
        _prune(out_dir, keep_last, keep=os.path.basename(final))
    _barrier()
    return final


def seal(path):
    """Checksum every file of a checkpoint written in one process (weights only, say) into its train.json."""
    info = read_info(path)
    info["checksums"] = {os.path.relpath(os.path.join(d, f), path): _sha256(os.path.join(d, f))
                         for d, _, names in os.walk(path) for f in names if f != "train.json"}
    write_json(os.path.join(path, "train.json"), info)


def clean(out_dir):
    """Remove what a killed save or prune left: its temporary step folder, a half-written `latest`, a folder being
    deleted (one writer holds the folder's lock, so nothing else is writing them)."""
    for d in os.listdir(out_dir):
        if re.fullmatch(r"\.step_\d+\.(tmp|del)|latest\.tmp", d):
            full = os.path.join(out_dir, d)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)


def _prune(out_dir, keep_last, keep):
    if keep_last <= 0:  # 0 keeps every checkpoint
        return
    steps = sorted(d for d in os.listdir(out_dir) if d.startswith("step_") and is_checkpoint(os.path.join(out_dir, d)))
    # the two newest checkpoints saved outside a gradient-norm spike are kept too: after a divergence the one to go
    # back to is the newest saved before the spike began, and the spike shows only in the step after a save
    healthy = [d for d in reversed(steps) if read_info(os.path.join(out_dir, d)).get("healthy", True)][:2]
    for d in steps[:-keep_last]:
        if d != keep and d not in healthy:  # renamed out of the step_* names first, so a kill mid-delete leaves no torn step folder
            os.replace(os.path.join(out_dir, d), os.path.join(out_dir, f".{d}.del"))
            shutil.rmtree(os.path.join(out_dir, f".{d}.del"), ignore_errors=True)


# ----------------------------------------------------------------------------- load


def load_train_state(path, model, optimizer):
    """Resume: restore weights and optimizer state (each rank reads only its shards, resharding if the
    world size changed) and this rank's RNG state. Returns train.json's dict."""
    verify(path)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_TRAINABLE)  # also creates the optimizer's state
    state = {"model": model_sd, "optim": optim_sd}
    _dcp(dcp.load, state, path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=_TRAINABLE_LOAD)
    rng_file = os.path.join(path, "rng", f"rank_{_rank():05d}.pt")
    if os.path.isfile(rng_file):  # a rank the saving run did not have keeps its fresh RNG
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return read_info(path)


def load_weights(path, model):
    """Weights only (finetuning from one of our checkpoints), into a plain or sharded model. LoRA adapters
    added to the model are not in the base checkpoint and are left as they are."""
    verify(path)
    sd = {k: v for k, v in get_model_state_dict(model).items() if ".lora_" not in k}
    _dcp(dcp.load, {"model": sd}, path)
    set_model_state_dict(model, sd, options=StateDictOptions(strict=False))


def fingerprint(path):
    """A short id of the model in a folder (ours, Hugging Face's or Meta's), to tell later whether it is still
    that model: a hash of its weight files' names, sizes and first and last 64 KB (the header and the last
    tensor's numbers; hashing every byte of a 13B model would cost a minute per load)."""
    ck, h = resolve(path) or path, hashlib.sha256()
    for f in sorted(os.listdir(ck)):
        if f.endswith((".safetensors", ".bin", ".pth", ".pt", ".distcp")):
            size = os.path.getsize(os.path.join(ck, f))
            with open(os.path.join(ck, f), "rb") as fh:
                h.update(f"{f}:{size}:".encode() + fh.read(1 << 16))
                fh.seek(max(0, size - (1 << 16)))
                h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def lora_base(info, ck):
    """The base model a LoRA checkpoint's adapters were trained on (train.json "lora_base"), refused in one line when
    it is gone or is no longer that model: adapters on another base make another model."""
    base = info["lora_base"]
    if not os.path.isdir(base):
        raise InputError(f"{ck} holds LoRA adapters for the base model {base}, which is not there: put the base "
                         f"back at that path (or set lora_base in {ck}/train.json)")
    if info.get("lora_base_id") not in (None, fingerprint(base)):  # runs older than the id have none
        raise InputError(f"{ck} holds LoRA adapters trained on {base}, but the model there has changed since (its "
                         "weight files differ): put that model back")
    return base


def rebuilt(model, config):
    """model's tensors (not copies) in a Transformer built with config, whose shapes must be model's: for the
    settings that no shape depends on but modules keep (norm_eps, backend)."""
    with torch.device("meta"):
        new = Transformer(config)
    new.load_state_dict(model.state_dict(), assign=True)
    return new


def config_of(path):
    """The ModelConfig of the model a path holds (ours, a LoRA run's, Hugging Face's or Meta's), from its train.json,
    config.json or params.json alone: no weights are read."""
    ck = resolve(path)
    return model_config(read_info(ck)) if ck else hf.load_config(path)


def load_model(path, device="cpu", dtype=None, tokenizer="", need_tokenizer=False):
    """(model in eval mode, tokenizer or None) from, in one process: one of our run directories (its
    latest checkpoint), one of our checkpoint folders, a Hugging Face directory or a Meta consolidated
    checkpoint (both through hf.py). tokenizer: a tokenizer.model file or a prepared data directory to use
    instead of the checkpoint's own. Every script loads through here, so a tokenizer that does not fit the
    model is refused in one place."""
    model, tok = _load(str(path), device, dtype)
    bad = next((k for k, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad:  # else sampling draws garbage and training blames its learning rate
        raise InputError(f"{path}: the weight {bad} holds NaN or inf: these weights are damaged (or were saved after a "
                         "divergence); load another checkpoint")
    if tokenizer:
        tok = data.load_tokenizer(tokenizer) if os.path.isfile(os.path.join(tokenizer, "meta.json")) else Tokenizer(tokenizer)
    if tok is None and need_tokenizer:
        raise InputError(f"{path} holds no tokenizer (OpenELM ships none: it uses Llama-2's): pass "
                         "--tokenizer=path/to/tokenizer.model (or a prepared data dir)")
    V = model.config.vocab_size
    if tok is not None and not fits(tok.vocab_size, V):
        raise InputError(f"the tokenizer has {tok.vocab_size} tokens but {path} has {V}: they do not belong "
                         "together; pass --tokenizer=<the tokenizer it was trained with>")
    return model, tok


def _load(path, device, dtype):
    hf.refuse_gguf(path)
    if not os.path.isdir(path):
        what = "is a file, not a checkpoint folder" if os.path.exists(path) else "not found"
        raise InputError(f"checkpoint {path!r} {what}: give a run directory (out/<run>), one of its step_* "
                         "folders, or a Hugging Face model directory")
    ck = resolve(path)
    if ck is None:
        if os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(os.path.join(path, "params.json")):
            return hf.load_model(path, device=device, dtype=dtype), tokenizer_of(path)
        tok = tokenizer_file(path)
        if os.path.isfile(tok):
            raise InputError(f"{path} holds a tokenizer ({os.path.basename(tok)}) but no model (no config.json or "
                             f"weights): give the model's directory instead, and --tokenizer={path} if it lacks one")
        lacks = torn(path)
        if lacks:
            raise InputError(f"{path} holds no whole checkpoint ({lacks}): a save was interrupted or files were "
                             "deleted; put them back, or load another run")
        raise InputError(f"{path} holds no checkpoint (no 'latest' pointer, train.json or config.json): train one "
                         "with train.py, or point at a Hugging Face model directory")
    verify(ck)
    info = read_info(ck)
    if info.get("lora"):  # adapters only: load the base they were trained on, add them, merge them in
        import lora
        base = lora_base(info, ck)
        # merged in float32, then cast: the base at full precision, and the adapters as they were trained
        model = _load(base, device, torch.float32)[0]
        lora.add(model, **info["lora"])
        sd = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
        _dcp(dcp.load, {"model": sd}, ck)  # into the adapters' own storage
        model = rebuilt(lora.merge(model), model_config(info)).requires_grad_(True)  # with the run's own settings
        model = model.to(dtype=dtype) if dtype is not None else model
    else:
        with torch.device("meta"):  # allocate once, directly in the target dtype and device
            model = Transformer(model_config(info))
        model = model.to(dtype=dtype) if dtype is not None else model
        model.to_empty(device=device)
        sd = model.state_dict()
        _dcp(dcp.load, {"model": sd}, ck)  # fills sd's tensors (the model's own storage) in place, casting
        model.load_state_dict(sd)
    return model.eval(), tokenizer_of(ck)


def tokenizer_of(path):
    """The tokenizer a model's folder carries, or None: ours, the copy of its data's (meta.json beside the
    weights; a LoRA run without one, its base's); Hugging Face's or Meta's, tokenizer.model or tokenizer.json."""
    ck = resolve(path)
    if ck is None:
        return hf.load_tokenizer(path, required=False)
    if os.path.isfile(os.path.join(ck, "meta.json")) and data.has_tokenizer(ck):
        return data.load_tokenizer(ck)
    info = read_info(ck)
    return tokenizer_of(lora_base(info, ck)) if info.get("lora") else None
