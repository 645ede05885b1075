"""
Pretraining and finetuning of OpenELM and LLaMA. Settings at the top, then the steps of a run, then main().

    python train.py configs/elm_tiny.py                                      # one process: CPU, CUDA or MPS
    python train.py --init_from=resume --out_dir=out/elm_tiny                # continue a run exactly
    torchrun --standalone --nproc_per_node=8 train.py configs/elm_270m.py    # DDP on one node
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        train.py configs/open_llama_13b.py                                   # FSDP2 across nodes
    python train.py configs/finetune_alpaca.py --init_from=hf/open_llama_7b # instruction tuning (chat data)
    python train.py configs/finetune_lora.py --init_from=out/elm_tiny      # LoRA adapters on a frozen base

Each step draws its global batch of windows from a generator seeded by (seed, step), and every
(rank, micro-step) takes its own rows of it, so there is no loader state: a resumed run sees exactly the
batches an uninterrupted one would, and any world size or accumulation split sees the same global batch.
Chat data (prepare.py --chat_format=...) comes as rows with a loss mask: each epoch visits every row once in
an order seeded by (seed, epoch), and only the assistant's tokens are targets. The val loss is the mean over a
fixed set of val windows (or rows), split across ranks: it depends on the weights alone.
"""
import ctypes
import dataclasses
import functools
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

import checkpoint
import configurator
import data
import files
from configurator import InputError
from kernels import BACKENDS, fast_cpu_bf16
from model import IGNORE_INDEX, ModelConfig, Transformer
from tokenizer import fits, same_tokenizer

# -----------------------------------------------------------------------------
# settings: override with a config file and --key=value (configurator.py)
# I/O
out_dir = "out/run"  # checkpoints go to out_dir/step_XXXXXXX, `latest` names the newest
data_dir = "data/stdlib"  # made by prepare.py: token files, meta.json, tokenizer
init_from = "scratch"  # "scratch", "resume" (out_dir's latest checkpoint), or a path: our checkpoint or a HF model dir
resume_step = 0  # with init_from="resume": continue from out_dir's checkpoint of this step instead of the latest
save_interval = 1000  # steps between checkpoints; 0 = only at the end, -1 = never (benchmarks)
keep_last = 3  # checkpoints kept in out_dir (0 = all); the two newest from outside a loss spike stay too
eval_interval = 250  # steps between val-loss evaluations (0 = never)
eval_windows = 320  # the val set: this many fixed windows of block_size (chat data: the first this many rows)
log_interval = 10  # steps between log lines
log_file = ""  # also append every log line as JSON to this file ("" = don't)
wandb_log = False  # log to Weights & Biases (offline when no API key is configured)
wandb_project = "nanoelm"
wandb_run_name = ""  # "" = the name of out_dir
# batch: accumulation steps = global_batch_size // (batch_size * world size)
batch_size = 16  # sequences per micro-step per process
global_batch_size = 16  # sequences per optimizer step across all processes
# optimizer and schedule: linear warmup from warmup_init_lr, then cosine (CoreNet, optax's warmup_cosine_decay) or
# linear (Open-Instruct) decay to min_lr at lr_decay_iters
max_iters = 2000
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 100
warmup_init_lr = 0.0
lr_decay_iters = 2000
lr_schedule = "cosine"  # "cosine" or "linear" (Open-Instruct's) decay from learning_rate to min_lr
epochs = 0.0  # > 0 with chat (row) data: max_iters = lr_decay_iters = ceil(epochs * rows / global_batch_size)
warmup_ratio = 0.0  # > 0: warmup_iters = ceil(warmup_ratio * max_iters) (Alpaca and Open-Instruct use 0.03)
weight_decay = 0.1
wd_exclude_1d = True  # OpenELM exempts every 1-D parameter from decay; EasyLM (OpenLLaMA) decays all
beta1 = 0.9
beta2 = 0.95
adam_eps = 1e-8
grad_clip = 1.0  # global-norm clip (0 = off; the norm is still logged)
# system
device = "auto"  # auto | cpu | cuda | cuda:N | mps; under torchrun each rank takes cuda:LOCAL_RANK
dtype = "bfloat16"  # bfloat16 | float16 | float32: the autocast (or FSDP compute) dtype; weights stay fp32
compile = False  # torch.compile the model (per block under FSDP)
activation_checkpointing = False  # recompute each block in the backward pass: less memory, ~1/3 more compute
parallel = "ddp"  # under torchrun: "ddp" (replicas) or "fsdp" (FSDP2 fully_shard per block)
seed = 1337
# LoRA (lora.py): train low-rank adapters on a frozen base from init_from; only the adapters are saved
lora_rank = 0  # 0 = full finetuning
lora_alpha = 16.0  # the update is scaled by lora_alpha / lora_rank
lora_dropout = 0.05  # dropout on the adapters' input
lora_targets = "qkv_proj,out_proj,gate_up_proj,down_proj"  # projections that get adapters (fused layers)
# architecture: ModelConfig's fields (model.py has their meaning). A checkpoint or Hugging Face init_from brings
# its own, and that is what the run prints and saves; of these settings, only the FREE ones below may change it.
vocab_size = 32000
block_size = 2048  # the training context
n_layer = 12
n_embd = 768
n_head = 12
n_kv_head = 0  # 0 = n_head
head_dim = 0  # 0 = n_embd // n_head
ffn_dim = 3072
qkv_multipliers = None  # OpenELM layer-wise scaling: (0.5, 1.0) replaces n_head/n_kv_head/ffn_dim
ffn_multipliers = None  # (0.5, 4.0)
num_gqa_groups = 4  # query heads per kv head under layer-wise scaling
ffn_dim_divisor = 256
qk_norm = False
tie_embeddings = False
norm_eps = 1e-6
rope_theta = 10000.0
init = "normal"  # "normal" (LLaMA) or "corenet" (OpenELM)
init_std = 0.02
z_loss = 0.0
backend = "auto"  # kernels: auto | triton | sdpa | eager
# -----------------------------------------------------------------------------
ARCH = [f.name for f in dataclasses.fields(ModelConfig)]
SETTINGS = [k for k, v in globals().items() if k.islower() and not k.startswith("_")
            and isinstance(v, (int, float, str, tuple, type(None)))]


# ----------------------------------------------------------------------------- settings and resume

def settings_for(argv, sources):
    """Defaults, then the config file, then --key=value; `sources` receives where each setting given came from."""
    return configurator.configure({k: globals()[k] for k in SETTINGS} | {"__file__": __file__, "__doc__": __doc__}, argv, sources)


def refuse_taken(out_dir):
    """A new run (scratch or finetune) needs an out_dir of its own: not another run's (or its own base's, which its
    checkpoints would replace), a data folder or a model's."""
    held = checkpoint.occupant(out_dir)
    lacks = checkpoint.torn(out_dir) if held == "checkpoints" and not checkpoint.latest(out_dir, quiet=True) else None
    if lacks:
        raise InputError(f"{out_dir} holds checkpoints, none of them whole ({lacks}): use another --out_dir, or put "
                         "the missing files back and continue with --init_from=resume")
    if held == "checkpoints":
        raise InputError(f"{out_dir} already holds checkpoints: continue with --init_from=resume, or use another "
                         "--out_dir (or delete it)")
    if held:
        raise InputError(f"{out_dir} holds {held}, which a run's checkpoints would mix with: use another --out_dir")


def resume_settings(s, sources):
    """(settings, checkpoint to resume from or None). On --init_from=resume the checkpoint's settings hold instead
    of the defaults: an explicit --key=value that differs from them is taken and printed (old -> new), a config
    file that differs is refused, and the architecture never changes (only the kernel backend and z_loss may)."""
    if s["init_from"] != "resume":
        return s, None
    if s["resume_step"]:
        resume_from = checkpoint.step_dir(s["out_dir"], s["resume_step"])
        if not os.path.isdir(resume_from):
            have = [os.path.basename(p) for p in checkpoint.step_folders(s["out_dir"])]
            raise InputError(f"--resume_step={s['resume_step']}: {resume_from} is not there (the run has "
                             f"{', '.join(have) or 'no checkpoints'}): pick one of those steps")
    else:
        resume_from = checkpoint.latest(s["out_dir"])
    torn = checkpoint.torn(s["out_dir"]) if resume_from is None else None
    if torn:
        raise InputError(f"--init_from=resume but {s['out_dir']} holds no whole checkpoint ({torn}): a save was "
                         "interrupted or files were deleted; put them back, or train again in a new --out_dir")
    if resume_from is None and checkpoint.is_checkpoint(s["out_dir"]):
        raise InputError(f"--init_from=resume continues a run directory, and {s['out_dir']} is one checkpoint: to "
                         f"train from it, --init_from={s['out_dir']} --out_dir=<new>")
    if resume_from is None:
        raise InputError(f"--init_from=resume but {s['out_dir']} holds no checkpoint: train from scratch first, or "
                         "fix --out_dir")
    old = checkpoint.read_info(resume_from)["settings"]
    # step counts that epochs or warmup_ratio set (schedule_of) are saved as computed and computed again
    derived = (("max_iters", "lr_decay_iters") if old.get("epochs", 0) > 0 else ()) + \
        (("warmup_iters",) if old.get("warmup_ratio", 0) > 0 else ())
    for k, was in old.items():
        was = tuple(was) if isinstance(was, list) else was  # JSON turned tuples into lists
        if k not in s or k in ("init_from", "out_dir", "resume_step", *derived) or was == s[k]:
            continue
        if k not in sources:
            s[k] = was
        elif k in ARCH and k not in ("backend", "z_loss") or k in ("lora_rank", "lora_alpha", "lora_targets"):
            raise InputError(f"{sources[k]} asks for {k}={s[k]!r}, but {resume_from} was trained with {k}={was!r}: a "
                             "resumed run keeps its architecture and adapters (start a new --out_dir to change them)")
        elif sources[k].endswith(".py"):
            raise InputError(f"{sources[k]} sets {k}={s[k]!r}, but {resume_from} was trained with {k}={was!r}: on "
                             "resume the checkpoint's settings hold; resume without the config file, or ask for the "
                             f"change with --{k}={s[k]!r}")
        elif os.environ.get("RANK", "0") == "0":
            print(f"resume: {k} {was!r} -> {s[k]!r} ({sources[k]})")
    return s, resume_from


FREE = ("block_size", "rope_theta", "norm_eps", "z_loss", "backend")  # architecture settings no weight's shape depends on


def model_settings(s, sources, resume_from):
    """Finetuning (init_from a model, not resuming): the architecture is the model's, read from its config before
    any weight is. Architecture settings given (or a config file's) that describe another model are refused. Of
    the FREE ones, backend is the run's own; z_loss given replaces the model's; rope_theta and norm_eps asked for
    with --key=value do (a config file's must be the model's); block_size sets the training windows (the model's
    context when not given) and, longer than the model's context, extends it (build_model). Every other setting
    of the architecture becomes the model's, so what is printed and saved is what trains."""
    if resume_from or s["init_from"] in ("scratch", "resume"):
        return
    model = checkpoint.config_of(s["init_from"])
    have = dataclasses.asdict(model)
    try:
        asked = shape_of(ModelConfig(**{**have, **{k: s[k] for k in ARCH if k in sources}}))
    except (ValueError, TypeError) as e:
        if all(k in FREE for k in ARCH if k in sources):  # a value out of range, such as norm_eps=0
            raise InputError(f"with init_from={s['init_from']}, the architecture settings describe no model: {e}")
        asked = (f"no model ({e})", None)  # settings of another model (its multiplier list, say) over this one's
    if asked != shape_of(model):
        raise InputError(f"the settings describe {asked[0]} but init_from={s['init_from']} holds "
                         f"{shape_of(model)[0]}: the architecture comes from the model; drop the architecture "
                         f"settings (or the config file that sets them; of those, only {', '.join(FREE)} may change)")
    for k in ("block_size", "rope_theta", "norm_eps"):
        if sources.get(k, "").endswith(".py") and s[k] != have[k]:  # a file's value is not a choice for this model
            raise InputError(f"{sources[k]} sets {k}={s[k]!r} but init_from={s['init_from']} has {k}={have[k]!r}: "
                             f"to change it, ask with --{k}={s[k]!r}; else drop the config file")
    respelt = ("qkv_multipliers", "ffn_multipliers") if have["qkv_multipliers"] is not None else ()  # a pair, a list
    unused = [k for k in ARCH if k in sources and k not in (*FREE, *respelt) and s[k] != have[k]]  # no shape changes
    if unused and os.environ.get("RANK", "0") == "0":  # e.g. n_head under layer-wise scaling; init for loaded weights
        print(f"note: {', '.join(f'{k}={s[k]!r}' for k in unused)} {'changes' if len(unused) == 1 else 'change'} "
              f"nothing in init_from's model: it keeps {', '.join(f'{k}={have[k]!r}' for k in unused)}")
    s.update({k: v for k, v in have.items() if k != "backend" and (k not in FREE or k not in sources)})


def check(s, sources=None):
    """Every setting in its range, before any work: a value torch would refuse later, or one that would train
    nothing and exit 0 (max_iters < 0, an evaluation over no windows), stops here with one line."""
    for name, allowed in (("parallel", ("ddp", "fsdp")), ("dtype", configurator.DTYPES),
                          ("lr_schedule", ("cosine", "linear")), ("backend", BACKENDS)):
        if s[name] not in allowed:
            raise InputError(f"{name}={s[name]!r} is not one of {allowed}")
    at_least = {"batch_size": 1, "global_batch_size": 1, "log_interval": 1, "block_size": 1, "max_iters": 0,
                "warmup_iters": 0, "lr_decay_iters": 0, "eval_interval": 0, "keep_last": 0, "save_interval": -1,
                "learning_rate": 0, "min_lr": 0, "warmup_init_lr": 0, "weight_decay": 0, "adam_eps": 0,
                "grad_clip": 0, "epochs": 0, "lora_rank": 0, "resume_step": 0}
    for name, low in at_least.items():
        if s[name] < low:
            raise InputError(f"{name}={s[name]} must be at least {low}")
    for name in ("beta1", "beta2", "lora_dropout", "warmup_ratio"):
        if not 0 <= s[name] < 1:
            raise InputError(f"{name}={s[name]} must be in [0, 1)")
    if s["eval_interval"] and s["eval_windows"] < 1:
        raise InputError(f"eval_windows={s['eval_windows']} scores no val windows: give at least 1, or "
                         f"--eval_interval=0 for no evaluation")
    if not 0 <= s["seed"] < 2 ** 63:
        raise InputError(f"seed={s['seed']} must be in [0, 2**63)")
    if s["backend"] == "triton" and not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        raise InputError("backend='triton' needs a CUDA GPU (or TRITON_INTERPRET=1, the slow interpreter): use "
                         "--backend=auto, which takes the Triton kernels where they run")
    if s["lora_rank"] and s["lora_alpha"] <= 0:
        raise InputError(f"lora_alpha={s['lora_alpha']} scales the adapters' update by {s['lora_alpha']} / rank: give "
                         "a positive number (16 is usual)")
    given = [k for k in ("lora_alpha", "lora_dropout", "lora_targets") if k in (sources or {})]
    if given and not s["lora_rank"]:
        raise InputError(f"{sources[given[0]]} sets a LoRA option but lora_rank=0 trains every weight: add "
                         "--lora_rank=N (8 or 16 is usual) for adapters")
    for name, rule, how in (("max_iters", "epochs", "the number of chat rows"), ("lr_decay_iters", "epochs",
                            "the number of chat rows"), ("warmup_iters", "warmup_ratio", "max_iters")):
        if s[rule] > 0 and (sources or {}).get(name, "").startswith("--"):  # a config file's count gives way, noted
            raise InputError(f"{sources[name]} would not be used: {rule}={s[rule]} sets {name} from {how}; add "
                             f"--{rule}=0 to set {name} yourself")
    if s["init_from"] not in ("scratch", "resume") and not os.path.isdir(s["init_from"]):
        raise InputError(f"init_from={s['init_from']}: no such folder; give 'scratch', 'resume', one of our run or "
                         "checkpoint directories, or a Hugging Face model directory")
    if s["resume_step"] and s["init_from"] != "resume":
        raise InputError("--resume_step picks the checkpoint of a resume: add --init_from=resume")
    configurator.check_device(s["device"])
    if s["lora_rank"]:
        import lora
        lora.target_names(s["lora_targets"])


def config_of(path, **overrides):
    """The ModelConfig a config file describes: its architecture keys over ModelConfig's defaults."""
    values = {k: v for k, v in configurator.read_file(path).items() if k in ARCH}
    try:
        return ModelConfig(**{**values, **overrides})
    except ValueError as e:
        raise InputError(f"{path} describes no model: {e}")


# ----------------------------------------------------------------------------- distributed init

def init_distributed(device):
    """(rank, world, local rank, device string). torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; NCCL on GPUs,
    gloo on CPUs."""
    if "RANK" not in os.environ:
        return 0, 1, 0, configurator.check_device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank, f"cuda:{local_rank}" if cuda else "cpu"


# ----------------------------------------------------------------------------- data

def lr_at(it, learning_rate, min_lr, warmup_iters, warmup_init_lr, lr_decay_iters, lr_schedule="cosine"):
    """OpenELM (CoreNet) and LLaMA (optax warmup_cosine_decay) share this shape; only the numbers differ."""
    if it < warmup_iters:
        return warmup_init_lr + it * (learning_rate - warmup_init_lr) / warmup_iters
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    if lr_schedule == "linear":
        return learning_rate - ratio * (learning_rate - min_lr)
    return min_lr + 0.5 * (learning_rate - min_lr) * (1.0 + math.cos(math.pi * ratio))


def open_data(data_dir, split, block_size, required=True):
    """The split's document streams longer than one window of block_size + 1 tokens."""
    shards = [s for s in data.open_split(data_dir, split) if len(s) > block_size]
    if not shards and required:
        raise InputError(f"the {split!r} split of {data_dir} has no document stream longer than "
                         f"block_size={block_size}: prepare more data or lower --block_size")
    return shards


def window_starts(shards, n, block_size, generator):
    """n (shard, offset) pairs, uniform over every window of block_size + 1 tokens in the shards."""
    counts = torch.tensor([len(s) - block_size for s in shards])  # windows per shard
    ends = counts.cumsum(0)
    flat = torch.randint(int(ends[-1]), (n,), generator=generator)
    shard = torch.searchsorted(ends, flat, right=True)
    return list(zip(shard.tolist(), (flat - ends[shard] + counts[shard]).tolist()))


def read_windows(shards, starts, block_size, pad_id=None):
    """(x, y) of the windows at starts [(shard, offset)]; targets equal to pad_id are ignored."""
    rows = torch.from_numpy(np.stack([shards[s][o:o + block_size + 1] for s, o in starts]).astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:].clone()
    if pad_id is not None:
        y[y == pad_id] = IGNORE_INDEX  # padded rows (unpacked data) teach nothing
    return x, y


def get_batch(shards, step, micro, rank, world, block_size, batch_size, global_batch_size, seed, pad_id=None):
    """(x, y) for one micro-step: rows [(micro * world + rank) * batch_size, +batch_size) of the global batch of
    `step`, a pure function of (seed, step)."""
    starts = window_starts(shards, global_batch_size, block_size, torch.Generator().manual_seed((seed << 32) + step))
    lo = (micro * world + rank) * batch_size
    return read_windows(shards, starts[lo:lo + batch_size], block_size, pad_id)


@functools.lru_cache(maxsize=4)
def epoch_order(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed((seed << 32) + epoch))


def get_rows(rows, step, micro, rank, world, batch_size, global_batch_size, seed):
    """get_batch for chat data, (tokens, mask) rows from data.open_rows. Sample i of the run is row order[i % n] of
    epoch i // n, so epochs, resume and world size work as they do for windows."""
    n = len(rows[0])
    lo = step * global_batch_size + (micro * world + rank) * batch_size
    return data.read_rows(rows, [int(epoch_order(n, seed, i // n)[i % n]) for i in range(lo, lo + batch_size)])


def val_set(val_data, chat, n, block_size, seed, pad_id, rank, world, batch_size):
    """This rank's micro-batches [(x, y)] of the fixed val set: n windows drawn once from (seed, stream 1), or the
    first n chat rows. Every rank gets the same number of batches (FSDP runs its collectives in lockstep): the
    last ranks' shares are topped up with copies whose targets are all ignored."""
    if chat:
        items, read = list(range(min(n, len(val_data[0])))), lambda idx: data.read_rows(val_data, idx)
    else:
        items = window_starts(val_data, n, block_size, torch.Generator().manual_seed((seed << 32) + (1 << 28)))
        read = lambda starts: read_windows(val_data, starts, block_size, pad_id)  # noqa: E731
    per = -(-len(items) // world)
    mine = items[rank * per:(rank + 1) * per]
    real = [True] * len(mine) + [False] * (per - len(mine))
    mine += items[:per - len(mine)]
    batches = []
    for i in range(0, per, batch_size):
        x, y = read(mine[i:i + batch_size])
        y[~torch.tensor(real[i:i + batch_size])] = IGNORE_INDEX
        batches.append((x, y))
    return batches


def load_data(s):
    """(meta, train data, val data, chat?, pad id, block size): windows of a token stream, or chat rows whose
    length is the sequence length."""
    meta = data.read_meta(s["data_dir"])
    if meta.get("tokenizer_file") and not os.path.isfile(os.path.join(s["data_dir"], meta["tokenizer_file"])):
        raise InputError(f"{s['data_dir']} lacks {meta['tokenizer_file']}, the tokenizer its meta.json names (its "
                         f"checkpoints would carry none): re-run prepare.py for it, or copy the tokenizer back")
    pad_id = meta.get("pad_id")
    pad_id = pad_id if pad_id not in (None, meta.get("bos_id"), meta.get("eos_id")) else None
    if meta.get("layout") == "rows":
        train_data = data.open_rows(s["data_dir"], "train")
        if not len(train_data[0]):
            raise InputError(f"the train split of {s['data_dir']} holds no conversations: prepare more data, or "
                             "lower --val_fraction and --test_fraction")
        val = meta["splits"].get("val", {}).get("rows")
        return meta, train_data, data.open_rows(s["data_dir"], "val") if val else None, True, pad_id, meta["seq_len"]
    train_data = open_data(s["data_dir"], "train", s["block_size"])
    val = open_data(s["data_dir"], "val", s["block_size"], required=False) if "val" in meta["splits"] else []
    return meta, train_data, val or None, False, pad_id, s["block_size"]


# ----------------------------------------------------------------------------- model and resume

def build_model(s, resume_from, fsdp):
    """(model, base, base_ours). The weights come from one of four places:
      - scratch (init_from="scratch", no LoRA): initialised from the seed, with the settings' architecture;
      - a full resume: the architecture of the checkpoint, its weights loaded later with the optimizer state;
      - one of our checkpoints (init_from=PATH, or the base a LoRA run names): its architecture, weights loaded
        later (base_ours is that checkpoint), so FSDP can fill its shards;
      - a Hugging Face or Meta directory (or a LoRA run, merged): loaded in full here, on the CPU.
    base is where the (frozen, for LoRA) weights come from: None for scratch and a full resume. A LoRA run's
    checkpoints hold only adapters, so its resume starts again from the base it names. FSDP never builds the full
    model on a rank when it can be avoided: on_meta builds it on the meta device, to be sharded, then filled."""
    resume_info = checkpoint.read_info(resume_from) if resume_from else {}
    base = (checkpoint.lora_base(resume_info, resume_from) if resume_info.get("lora") else
            s["init_from"] if s["init_from"] not in ("scratch", "resume") else None)
    base_ours = checkpoint.resolve(base) if base is not None else None
    if base_ours and checkpoint.read_info(base_ours).get("lora"):  # adapters only: load_model merges them into theirs
        base_ours = None
    if s["lora_rank"] and base is None:
        raise InputError("LoRA trains adapters on a pretrained model: set --init_from to a checkpoint or a Hugging "
                         "Face directory (or --lora_rank=0 to train from scratch)")
    if resume_info:  # the run's own architecture, as it trained; the kernel backend and z_loss are ours to pick
        config = dataclasses.replace(checkpoint.model_config(resume_info), backend=s["backend"], z_loss=s["z_loss"])
    elif base is not None:  # the model's, with the FREE settings model_settings left (a context only grows)
        config = checkpoint.config_of(base)
        config = dataclasses.replace(config, **{k: s[k] for k in FREE if k != "block_size"},
                                     block_size=max(config.block_size, s["block_size"]))
    else:
        try:
            config = ModelConfig(**{k: s[k] for k in ARCH})
        except ValueError as e:
            raise InputError(f"the architecture settings describe no model: {e}")
    if base is not None and not base_ours:  # Hugging Face or Meta, through hf.py (in full on the CPU)
        return checkpoint.rebuilt(checkpoint.load_model(base, dtype=torch.float32)[0], config).train(), base, None
    torch.manual_seed(s["seed"])  # the initial weights are a function of the seed alone
    with torch.device("meta") if fsdp else nullcontext():
        return Transformer(config), base, base_ours


def shard(model, seed, device_type, dev, world, ptdtype, fill_from_seed):
    """FSDP2: one unit per block plus the root (embedding, final norm, head); bf16 compute, fp32 reduction. A model
    on the meta device gets only this rank's shards; from scratch they are filled with one process's numbers,
    one full-size parameter at a time, on the CPU, in the order and draws of Transformer.init_weights()."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import distribute_tensor
    mesh = init_device_mesh(device_type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=ptdtype, reduce_dtype=torch.float32) if ptdtype != torch.float32 else None
    kw = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
    for layer in model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    if model.tok_embeddings.weight.is_meta:
        model.to_empty(device=dev)
        if fill_from_seed:
            torch.manual_seed(seed)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    full = torch.empty(p.shape, dtype=p.dtype)
                    model.init_parameter(name, full)
                    p.copy_(distribute_tensor(full.to(dev), p.device_mesh, p.placements))


# ----------------------------------------------------------------------------- logging

def open_wandb(s, settings):
    """Weights & Biases on rank 0 (offline when no API key is configured)."""
    try:
        import wandb
    except ImportError:
        raise InputError("--wandb_log=True needs wandb: pip install wandb (or drop --wandb_log)")
    netrc = os.path.expanduser("~/.netrc")
    if "WANDB_API_KEY" not in os.environ and not (os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()):
        os.environ.setdefault("WANDB_MODE", "offline")  # no key: log locally, `wandb sync` later
    wandb.init(project=s.wandb_project, name=s.wandb_run_name or os.path.basename(os.path.normpath(s.out_dir)),
               config=settings, resume="allow")
    return wandb


def log(record, log_file, wandb):
    if log_file:
        with open(log_file, "a") as f:
            f.write(json.dumps(record) + "\n")
    if wandb:
        wandb.log(record, step=record["step"])


# ----------------------------------------------------------------------------- the run

def hold_freed_memory():
    """On Linux with glibc, keep freed memory in the process: by default glibc serves large blocks with fresh
    mmaps, returned on free, and trims the heap's top, so every CPU step faults its activations' pages in
    again, each zeroed by the kernel (README: Results). No mmaps and no trimming keep them for the next step;
    mallopt sets here what MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_=2147483647 set at start-up. (A mmap
    threshold cannot do it: glibc caps it at 32 MB, below the logits of elm_tiny's fp32 step. Blocks that the
    heap cannot hold still get their mmap, as do other threads' large ones.) A user's own MALLOC_* variables
    for these or malloc tunables in GLIBC_TUNABLES win. Returns whether both settings took."""
    user_set = os.environ.keys() & {"MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} or \
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    if user_set or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
    took = [mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)]
    return took == [1, 1]


def precision(dtype, device_type, fsdp):
    """(torch dtype, autocast context, GradScaler). Weights stay fp32: FSDP casts them for compute itself
    (MixedPrecisionPolicy), everyone else autocasts; fp16 needs loss scaling."""
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = "float16"  # V100 and older: fp16 with loss scaling instead
        print("note: this GPU has no bfloat16; training in float16 with a GradScaler")
    if dtype == "bfloat16" and device_type == "cpu" and not fast_cpu_bf16():
        dtype = "float32"  # bf16 matmuls are emulated without AVX512 (65x slower than fp32 on an AVX2 EPYC)
        print("note: this CPU has no fast bfloat16 (no AVX512): training in float32")
    if dtype == "float16" and device_type == "cpu":
        dtype = "float32"  # CPU autocast to fp16 runs emulated kernels: elm_tiny's step 50x fp32's on a 2-core EPYC
        print("note: a CPU has no fast float16: training in float32")
    if fsdp and dtype == "float16":
        raise InputError("FSDP here runs bfloat16 or float32, not float16: use --dtype=bfloat16")
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores where fp32 remains
    torch.backends.cudnn.allow_tf32 = True
    ptdtype = configurator.torch_dtype(dtype)
    autocast = nullcontext() if ptdtype == torch.float32 or fsdp else torch.autocast(device_type, dtype=ptdtype)
    return ptdtype, autocast, torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)


def prepare_model(model, s, lora_config, fsdp, device_type, dev, world, ptdtype, from_scratch):
    """LoRA adapters, activation checkpointing, compile and FSDP, in that order (each sees what the one before
    added); returns the model on its device."""
    if lora_config["rank"]:  # before compile and sharding, so both see the adapters
        import lora
        lora.add(model, **lora_config)
    if s.activation_checkpointing:  # per block; assigning forward keeps the parameter names unchanged
        from torch.utils.checkpoint import checkpoint as recompute
        for layer in model.layers:
            layer.forward = (lambda f: lambda *a: recompute(f, *a, use_reentrant=False))(layer.forward)
    if s.compile:  # in place (nn.Module.compile), so state-dict names carry no _orig_mod. prefix
        for m in (model.layers if fsdp else [model]):
            m.compile()
    if fsdp:
        shard(model, s.seed, device_type, dev, world, ptdtype, fill_from_seed=from_scratch)
    return model.to(dev)


def forward_backward(model, batches, autocast, scaler, world, distributed, fsdp):
    """Gradients of one optimizer step over its micro-batches; returns the step's loss (a tensor). Each micro-batch
    is weighted by its share of the step's target tokens, so masked (padded) rows make the step equal to one big
    batch; DDP/FSDP average over ranks, hence the factor world."""
    n_targets = sum((y != IGNORE_INDEX).sum() for _, y in batches)
    if distributed:
        dist.all_reduce(n_targets)
    step_loss = torch.zeros((), device=n_targets.device)
    for m, (x, y) in enumerate(batches):
        last = m == len(batches) - 1
        if fsdp:  # gradients are reduced across ranks only after the last micro-step
            model.set_requires_gradient_sync(last)
        with (model.no_sync() if distributed and not fsdp and not last else nullcontext()), autocast:
            loss = model(x, y)[1]  # not the logits: the step's largest tensor, backward does not need them
            loss = loss * ((y != IGNORE_INDEX).sum() * world / n_targets)
        scaler.scale(loss).backward()
        step_loss += loss.detach()
    if distributed:
        dist.all_reduce(step_loss)
    return step_loss / world


def spiked(loss, norm, history):
    """Whether a step looks like the start of a divergence, against the recent normal steps' (loss, gradient norm):
    a non-finite value, a gradient norm 10x their median (or under 1/100 of it: the gradients of a dead network
    vanish), or a loss more than double their median and 2 nats above it."""
    if not (math.isfinite(loss) and math.isfinite(norm)):
        return True
    if not history:
        return False
    ml, mn = statistics.median(h[0] for h in history), statistics.median(h[1] for h in history)
    return not mn / 100 <= norm <= 10 * mn or loss > ml + max(2.0, ml)


def divergence_advice(s, since, lr):
    """Where to go back to after a divergence: the newest checkpoint saved before the gradient norm began to
    spike (at step `since`), and not itself saved during a spike; its weights are from before the run-up. The
    learning rate to try: a tenth of this run's, or the one that checkpoint was trained with if that is lower."""
    for path in checkpoint.step_folders(s.out_dir):
        info = checkpoint.read_info(path) if checkpoint.missing(path) is None else {}
        if info and info["step"] < since and info.get("healthy", True):
            lower = min(s.learning_rate / 10, info["settings"].get("learning_rate", s.learning_rate))
            dtype = " (or --dtype=bfloat16: float16 overflows)" if s.dtype == "float16" else ""
            return (f"{path} was saved before the gradient norm began to spike (step {since}): resume from it with a "
                    f"lower learning rate: python train.py --init_from=resume --out_dir={s.out_dir} "
                    f"--resume_step={info['step']} --learning_rate={lower:g}{dtype}")
    return (f"no checkpoint of {s.out_dir} was saved before the gradient norm began to spike (step {since}; the "
            f"learning rate was {lr:.3g}): start again with a lower --learning_rate (now {s.learning_rate:g})")


@torch.no_grad()
def evaluate(model, val, autocast, distributed):
    """Mean val loss per target token over the fixed val set, summed across ranks."""
    model.eval()
    dev = model.tok_embeddings.weight.device
    nats = torch.zeros(2, device=dev)  # (summed loss, target tokens)
    for x, y in val:
        x, y = x.to(dev), y.to(dev)
        with autocast:
            loss = model(x, y)[1]  # the logits go at once, not while the next batch makes its own
        n = (y != IGNORE_INDEX).sum()
        nats += torch.stack([loss.float() * n, n.float()])
    if distributed:
        dist.all_reduce(nats)
    model.train()
    return (nats[0] / nats[1]).item()


def main(argv):
    """Settings, then out_dir's lock for the life of the run (rank 0 writes its metadata), then the run. A start
    that fails leaves no new empty out_dir behind, and the debris of a killed save is cleared first."""
    sources = {}
    settings = settings_for(argv, sources)
    master = os.environ.get("RANK", "0") == "0"
    if master and settings["log_file"]:
        files.check_output(settings["log_file"], "log_file", atomic=False)  # appended to: a pipe or a link will do
    if settings["init_from"] != "resume":  # before the lock goes into it
        refuse_taken(settings["out_dir"])
    with files.sole_writer(settings["out_dir"], "out_dir") if master else nullcontext():
        if master:
            checkpoint.clean(settings["out_dir"])
        settings, resume_from = resume_settings(settings, sources)
        check(settings, sources)
        model_settings(settings, sources, resume_from)
        train(settings, resume_from)


def schedule_of(s, chat_rows):
    """(max_iters, lr_at's keywords). epochs and warmup_ratio set the step counts from the number of chat rows
    (None for a token stream, which has no epochs)."""
    max_iters, lr_decay_iters, warmup_iters = s.max_iters, s.lr_decay_iters, s.warmup_iters
    if s.epochs > 0:
        if chat_rows is None:
            raise InputError(f"--epochs needs chat (row) data and {s.data_dir} is a token stream: set --max_iters")
        max_iters = lr_decay_iters = math.ceil(s.epochs * chat_rows / s.global_batch_size)
    if s.warmup_ratio > 0:
        warmup_iters = math.ceil(s.warmup_ratio * max_iters)
    return max_iters, dict(learning_rate=s.learning_rate, min_lr=s.min_lr, warmup_iters=warmup_iters,
                           warmup_init_lr=s.warmup_init_lr, lr_decay_iters=lr_decay_iters, lr_schedule=s.lr_schedule)


def shape_of(c):
    """(a description, the weights' shapes) of a ModelConfig. Two spellings of one model (a multiplier pair and its
    per-layer list) compare equal."""
    dims = c.layer_dims()
    heads, ffn = ([d[i] for d in dims] if len({d[i] for d in dims}) > 1 else dims[0][i] for i in (0, 2))
    return (f"{c.n_layer} layers x {c.n_embd} (vocab {c.vocab_size}, query heads {heads}, FFN {ffn}"
            f"{', QK-norm' if c.qk_norm else ''}{', tied embeddings' if c.tie_embeddings else ''})",
            (c.vocab_size, c.n_embd, c.dim_head, tuple(dims), c.qk_norm, c.tie_embeddings))


def start_model(settings, resume_from, meta, block_size, chat, fsdp, dev, rank, world, ptdtype):
    """(model on dev with LoRA, compile and FSDP applied, its optimizer, the step and val loss it starts from, what
    its checkpoints record besides). The architecture actually trained goes into settings, which are printed."""
    s, master, device_type = SimpleNamespace(**settings), rank == 0, dev.split(":")[0]
    model, base, base_ours = build_model(settings, resume_from, fsdp)
    config = model.config
    # the architecture actually trained is what is printed and saved (block_size: the windows asked for; the
    # model's context is in its config)
    settings.update({k: v for k, v in dataclasses.asdict(config).items() if k != "block_size"})
    if not fits(meta["vocab_size"], config.vocab_size):  # e.g. configs/elm_270m.py on the demo's 8192-piece data
        fix = (f"set --vocab_size={meta['vocab_size']}, or prepare data with the tokenizer of the model's vocabulary "
               "(python prepare.py --tokenizer=...) and pass its --data_dir") if s.init_from == "scratch" else \
            "prepare the data with the model's own tokenizer (python prepare.py --tokenizer=...) and pass its --data_dir"
        raise InputError(f"{s.data_dir}'s tokenizer has {meta['vocab_size']} tokens but the model has "
                         f"vocab_size={config.vocab_size}: {fix}")
    source = resume_from or base  # a model that comes with its tokenizer: the data must have been made with it
    theirs = checkpoint.tokenizer_of(source) if source and data.has_tokenizer(s.data_dir) else None
    if theirs is not None and not same_tokenizer(theirs, data.load_tokenizer(s.data_dir)):
        fix = "resume on the data the run was trained on (its --data_dir)" if resume_from else \
            f"prepare the data with the model's tokenizer (python prepare.py --tokenizer={theirs.name} ...)"
        raise InputError(f"{s.data_dir} was tokenized with a different tokenizer than {source}'s: the model would "
                         f"learn ids that stand for other pieces; {fix}")
    if block_size > s.block_size:  # chat rows: their length is prepare.py's seq_len (windows are block_size)
        raise InputError(f"the chat rows of {s.data_dir} are {block_size} tokens, longer than block_size="
                         f"{s.block_size}: prepare the data with --seq_len={s.block_size} or less" + (
                             "" if resume_from else f", or raise --block_size to {block_size}" + (
                                 " (which extends the model's context)" if s.init_from != "scratch" else "")))
    if master:
        os.makedirs(s.out_dir, exist_ok=True)
        configurator.print_settings(settings)
    lora_config = dict(rank=s.lora_rank, alpha=s.lora_alpha, dropout=s.lora_dropout, targets=s.lora_targets)
    model = prepare_model(model, s, lora_config, fsdp, device_type, dev, world, ptdtype,
                          from_scratch=base is None and resume_from is None)
    optimizer = model.configure_optimizers(s.weight_decay, s.learning_rate, (s.beta1, s.beta2), s.adam_eps,
                                           s.wd_exclude_1d)
    step, val_loss = 0, None
    if base_ours and (s.lora_rank or not resume_from):  # a LoRA resume needs its frozen base too
        checkpoint.load_weights(base_ours, model)
        if master:
            print(f"initialised from {base_ours}")
    if resume_from:
        info = checkpoint.load_train_state(resume_from, model, optimizer)
        step, val_loss = info["step"], info.get("val_loss")
        if master:
            print(f"resumed from {resume_from} at step {step}")
    elif s.lora_rank:
        import lora
        lora.init(model, s.seed)
        torch.manual_seed(s.seed + rank)  # adapter dropout: a mask stream per rank (rank 0's is one process's)
    extra = {"lora": lora_config, "lora_base": os.path.abspath(checkpoint.resolve(base) or base),
             "lora_base_id": checkpoint.fingerprint(base)} if s.lora_rank else {}
    return model, optimizer, step, val_loss, extra


def train(settings, resume_from):
    s = SimpleNamespace(**settings)
    rank, world, local_rank, dev = init_distributed(s.device)
    distributed, master = "RANK" in os.environ, rank == 0
    fsdp = distributed and s.parallel == "fsdp"
    if s.parallel == "fsdp" and not distributed:
        print("note: parallel='fsdp' shards under torchrun; one process trains the whole model", file=sys.stderr)
    if s.global_batch_size % (s.batch_size * world):
        raise InputError(f"global_batch_size={s.global_batch_size} is not a multiple of batch_size * world size = "
                         f"{s.batch_size} * {world}: change --global_batch_size or --batch_size")
    micro_steps = s.global_batch_size // (s.batch_size * world)
    torch.manual_seed(s.seed)
    device_type = dev.split(":")[0]
    if device_type == "cpu":
        hold_freed_memory()
    ptdtype, autocast, scaler = precision(s.dtype, device_type, fsdp)

    # data, and the schedule's step counts (epochs and warmup_ratio count chat rows)
    meta, train_data, val_data, chat, pad_id, block_size = load_data(settings)
    # a micro-step's logits and their gradient alone: more than the device holds is a typo, not a slow run
    logits = 2 * s.batch_size * block_size * s.vocab_size * (4 if ptdtype == torch.float32 else 2)
    memory = (torch.cuda.get_device_properties(dev).total_memory if device_type == "cuda" else
              os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if device_type == "cpu" else 0)
    if memory and logits > memory:
        raise InputError(f"a micro-step of batch_size={s.batch_size} x {block_size} tokens makes {logits / 2**30:,.1f} "
                         f"GB of logits and their gradient, more than the {memory / 2**30:,.1f} GB of this {device_type}: "
                         "lower --batch_size (global_batch_size accumulates the rest) or --block_size")
    if s.eval_interval and val_data is None and master:
        print(f"note: {s.data_dir} has no val {'rows' if chat else 'split longer than block_size'}: no val loss")
    max_iters, schedule = schedule_of(s, len(train_data[0]) if chat else None)
    for name, got, rule in (("max_iters", max_iters, "epochs"), ("warmup_iters", schedule["warmup_iters"], "warmup_ratio"),
                            ("lr_decay_iters", schedule["lr_decay_iters"], "epochs")):
        if got != settings[name] and settings[name] != globals()[name] and master:  # a count the user had set
            print(f"note: {rule}={settings[rule]} sets {name}={got} (not the {settings[name]} of the settings)")
    settings.update(max_iters=max_iters, warmup_iters=schedule["warmup_iters"], lr_decay_iters=schedule["lr_decay_iters"])
    if s.min_lr > s.learning_rate and master:  # a finetune's lower --learning_rate under a recipe's min_lr, say
        print(f"note: min_lr={s.min_lr} is above learning_rate={s.learning_rate}: the schedule rises to min_lr; set "
              "--min_lr to decay")
    info = checkpoint.read_info(resume_from) if resume_from else {}
    resumes_at = info.get("step", 0)
    saved_meta = os.path.join(resume_from, "meta.json") if resume_from else ""
    if (info and os.path.realpath(info["settings"].get("data_dir", "")) == os.path.realpath(s.data_dir)
            and os.path.isfile(saved_meta)
            and data.read_meta(resume_from) != meta):  # the same folder with other contents: prepared again since
        raise InputError(f"{s.data_dir} changed since {resume_from} was saved (its meta.json differs from the copy "
                         "there): a resume continues on the data it was trained on; prepare that again, or start a "
                         f"new run from the checkpoint (--init_from={resume_from} --out_dir=<new>)")
    if resumes_at > max_iters:  # refused before anything is loaded
        raise InputError(f"the run resumes at step {resumes_at}, past max_iters={max_iters}: raise --max_iters (and "
                         f"--lr_decay_iters with it) to train on")
    if resumes_at == max_iters:  # a finished run started again (a requeued job, say): nothing to do, and no error
        if master:
            print(f"{resume_from} is at step {resumes_at} = max_iters: the run is done (raise --max_iters, and "
                  "--lr_decay_iters with it, to train on)")
        if distributed:
            dist.destroy_process_group()
        return
    common = dict(rank=rank, world=world, batch_size=s.batch_size, global_batch_size=s.global_batch_size, seed=s.seed)
    batch = functools.partial(get_rows, train_data, **common) if chat else \
        functools.partial(get_batch, train_data, block_size=block_size, pad_id=pad_id, **common)
    val = val_set(val_data, chat, s.eval_windows, block_size, s.seed, pad_id, rank, world, s.batch_size) \
        if val_data is not None else []

    # the model, then the optimizer (after sharding, so it holds the shards), then the weights and state it resumes
    model, optimizer, step, val_loss, extra = start_model(settings, resume_from, meta, block_size, chat, fsdp, dev,
                                                          rank, world, ptdtype)
    raw = model  # the plain module: checkpoints and evaluation use it
    if distributed and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    wandb = open_wandb(s, settings) if s.wandb_log and master else None

    # the loop
    tokens_per_step = s.global_batch_size * block_size
    flops_per_token = raw.flops_per_token(block_size)
    if master:
        trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        if trainable < raw.num_params():
            print(f"LoRA: {trainable:,} trainable parameters ({trainable / raw.num_params():.2%})")
        print(f"{raw.num_params() / 1e6:.2f}M parameters | {world} process(es) on {dev} | {micro_steps} micro-step(s) "
              f"of {s.batch_size}x{block_size} | {tokens_per_step:,} tokens/step | steps {step} -> {max_iters}")
    start_step, t_start = step, time.time()
    t_log, step_log = time.time(), step
    recent, spike, calm = [], None, 0  # the last normal steps' (loss, grad norm); where a spike began; normal since
    while step < max_iters:
        lr = lr_at(step, **schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
                   for x, y in (batch(step, m) for m in range(micro_steps))]
        lossf = forward_backward(model, batches, autocast, scaler, world, distributed, fsdp).item()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), s.grad_clip if s.grad_clip > 0 else float("inf"))
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        gn = grad_norm.item()
        if spiked(lossf, gn, recent):  # a divergence shows in the gradient norm steps before the loss is NaN
            spike, calm = step if spike is None else spike, 0
        else:
            recent, calm = recent[-99:] + [(lossf, gn)], calm + 1
            spike = None if calm >= 10 else spike
        # stop before the update reaches the weights (fp16's scaler skips inf-gradient steps by itself)
        if not math.isfinite(lossf) or (not scaler.is_enabled() and not math.isfinite(gn)):
            what = f"the loss became {lossf}" if not math.isfinite(lossf) else f"the gradient norm became {gn}"
            raise InputError(f"{what} at step {step}; stopped before the update. "
                             + divergence_advice(s, step if spike is None else spike, lr))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % s.log_interval == 0 or step == max_iters:
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t_log) / (step - step_log)
            t_log, step_log = time.time(), step
            tok_s = tokens_per_step / dt
            mfu = raw.estimate_mfu(tok_s / world, block_size) if device_type == "cuda" else None
            mem = (torch.cuda.max_memory_allocated() if device_type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
            record = {"step": step, "loss": lossf, "lr": lr, "grad_norm": grad_norm.item(), "tokens_per_s": tok_s,
                      "ms_per_iter": dt * 1e3, "tflops": flops_per_token * tok_s / 1e12, "mfu": mfu, "peak_mem_gb": mem}
            if master:
                print(f"step {step}/{max_iters} | loss {lossf:.4f} | lr {lr:.2e} | grad norm {record['grad_norm']:.3f} | "
                      f"{tok_s:,.0f} tok/s | {dt * 1e3:.0f} ms/iter | {record['tflops']:.3f} TFLOP/s"
                      + (f" | mfu {mfu * 100:.1f}%" if mfu is not None else "")
                      + f" | mem {mem:.2f} GB | eta {(max_iters - step) * dt / 60:.1f} min", flush=True)
                log(record, s.log_file, wandb)
        if s.eval_interval and val and (step % s.eval_interval == 0 or step == max_iters):
            val_loss = evaluate(raw, val, autocast, distributed)
            if master:
                print(f"step {step}: val loss {val_loss:.4f}", flush=True)
                log({"step": step, "val_loss": val_loss}, s.log_file, wandb)
        if s.save_interval >= 0 and (step == max_iters or (s.save_interval and step % s.save_interval == 0)):
            path = checkpoint.save(s.out_dir, step, raw, optimizer, settings, data_dir=s.data_dir, keep_last=s.keep_last,
                                   extra={"val_loss": val_loss, "healthy": spike is None, **extra})
            if master:
                print(f"saved {path}", flush=True)
    if master:
        took = time.time() - t_start
        print(f"done: {step - start_step} steps ({(step - start_step) * tokens_per_step:,} tokens) in {took / 60:.1f} min"
              f" | last loss {lossf if step > start_step else float('nan'):.4f}"
              + (f" | val loss {val_loss:.4f}" if val_loss is not None else "") + f" | checkpoint {checkpoint.latest(s.out_dir)}")
    if wandb:
        wandb.finish()
    if distributed:
        # DDP's reducer keeps the process group alive: drop it while every rank is still here, then leave together
        # (a rank tearing down gloo after its peer had exited hung once in CI)
        del model
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    configurator.main(main, sys.argv[1:])
