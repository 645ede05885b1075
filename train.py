"""
Pretraining and finetuning of OpenELM and LLaMA. Settings at the top, then the work, top to bottom.

    python train.py configs/elm_tiny.py                                      # one process: CPU, CUDA or MPS
    python train.py configs/elm_tiny.py --init_from=resume                   # continue out_dir exactly
    torchrun --standalone --nproc_per_node=8 train.py configs/elm_270m.py    # DDP on one node
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        train.py configs/open_llama_13b.py                                   # FSDP2 across nodes
    python train.py configs/finetune_alpaca.py --init_from=hf/open_llama_7b # instruction tuning (chat data)
    python train.py configs/finetune_lora.py --init_from=out/elm_tiny      # LoRA adapters on a frozen base

Each step draws its global batch of windows from a generator seeded by (seed, step), and every
(rank, micro-step) takes its own rows of it, so there is no loader state: a resumed run sees exactly the
batches an uninterrupted one would, and any world size or accumulation split sees the same global batch.
Chat data (prepare.py --chat_format=...) comes as rows with a loss mask: each epoch visits every row once in
an order seeded by (seed, epoch), and only the assistant's tokens are targets.
"""
import dataclasses
import functools
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

import checkpoint
import configurator
from model import IGNORE_INDEX, ModelConfig, Transformer

# -----------------------------------------------------------------------------
# settings: override with a config file and --key=value (configurator.py)
# I/O
out_dir = "out/run"  # checkpoints go to out_dir/step_XXXXXXX, `latest` names the newest
data_dir = "data/stdlib"  # made by prepare.py: token files, meta.json, tokenizer
init_from = "scratch"  # "scratch", "resume" (out_dir's latest checkpoint), or a path: our checkpoint or a HF model dir
save_interval = 1000  # steps between checkpoints; 0 = only at the end, -1 = never (benchmarks)
keep_last = 3  # checkpoints kept in out_dir (0 = all)
eval_interval = 250  # steps between val-loss evaluations (0 = never)
eval_iters = 20  # val batches per evaluation (per process)
log_interval = 10  # steps between log lines
log_file = ""  # also append every log line as JSON to this file ("" = don't)
wandb_log = False  # log to Weights & Biases (offline when no API key is configured)
wandb_project = "nanoelm"
wandb_run_name = ""  # "" = the name of out_dir
# batch: accumulation steps = global_batch_size // (batch_size * world size)
batch_size = 16  # sequences per micro-step per process
global_batch_size = 16  # sequences per optimizer step across all processes
# optimizer and schedule: linear warmup from warmup_init_lr, cosine to min_lr at lr_decay_iters (spec 2 and 3.4)
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
# architecture: every ModelConfig field is a setting, so config files set them by name
globals().update(dataclasses.asdict(ModelConfig()))
# -----------------------------------------------------------------------------


def lr_at(it):
    """OpenELM (CoreNet) and LLaMA (optax warmup_cosine_decay) share this shape; only the numbers differ."""
    if it < warmup_iters:
        return warmup_init_lr + it * (learning_rate - warmup_init_lr) / warmup_iters
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    if lr_schedule == "linear":
        return learning_rate - ratio * (learning_rate - min_lr)
    return min_lr + 0.5 * (learning_rate - min_lr) * (1.0 + math.cos(math.pi * ratio))


def window_starts(shards, n, generator):
    """n (shard, offset) pairs, uniform over every window of block_size + 1 tokens in the shards."""
    counts = torch.tensor([len(s) - block_size for s in shards])  # windows per shard
    ends = counts.cumsum(0)
    flat = torch.randint(int(ends[-1]), (n,), generator=generator)
    shard = torch.searchsorted(ends, flat, right=True)
    return shard.tolist(), (flat - ends[shard] + counts[shard]).tolist()


def get_batch(shards, step, micro, rank, world, pad_id=None, stream=0):
    """(x, y) for one micro-step: rows [(micro * world + rank) * batch_size, +batch_size) of the global
    batch of `step`, a pure function of (seed, stream, step). Targets equal to pad_id are ignored."""
    g = torch.Generator().manual_seed((seed << 32) + (stream << 28) + step)
    shard, off = window_starts(shards, global_batch_size, g)
    lo = (micro * world + rank) * batch_size
    rows = np.stack([shards[s][o:o + block_size + 1] for s, o in zip(shard[lo:lo + batch_size], off[lo:lo + batch_size])])
    rows = torch.from_numpy(rows.astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:].clone()
    if pad_id is not None:
        y[y == pad_id] = IGNORE_INDEX  # padded rows (unpacked data) teach nothing
    return x, y


@functools.lru_cache(maxsize=4)
def epoch_order(n, seed, stream, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed((seed << 32) + (stream << 28) + epoch))


def get_rows(data, step, micro, rank, world, stream=0):
    """get_batch for chat data: (tokens, mask) rows from prepare.open_rows. Sample i of the run is row
    order[i % n] of epoch i // n, so epochs, resume and world size work as they do for windows. A target is
    the next token where the mask marks it an assistant token, else ignored."""
    tokens, mask = data
    lo = step * global_batch_size + (micro * world + rank) * batch_size
    idx = [int(epoch_order(len(tokens), seed, stream, i // len(tokens))[i % len(tokens)]) for i in range(lo, lo + batch_size)]
    x = torch.from_numpy(tokens[idx].astype(np.int64))
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, :-1] = torch.where(torch.from_numpy(mask[idx][:, 1:].astype(bool)), x[:, 1:], IGNORE_INDEX)
    return x, y


def open_data(split, required=True):
    import prepare
    shards = [s for s in prepare.open_split(data_dir, split) if len(s) > block_size]
    if not shards and required:
        raise SystemExit(f"error: the {split!r} split of {data_dir} has no document stream longer than "
                         f"block_size={block_size}: prepare more data or lower --block_size")
    return shards


def main(argv):
    global dtype, block_size, max_iters, lr_decay_iters, warmup_iters  # derived below from the hardware and data
    # ------------------------------------------------------------------ settings
    settings = configurator.configure(globals(), argv)
    resume_from = None
    if init_from == "resume":
        resume_from = checkpoint.latest(out_dir)
        if resume_from is None:
            raise SystemExit(f"error: --init_from=resume but {out_dir} holds no checkpoint: "
                             f"train from scratch first, or fix --out_dir")
        # the checkpoint's settings are the base, so `--init_from=resume --out_dir=X` continues the same
        # recipe; a config file or --key=value on this command line still wins
        for k, v in checkpoint.read_info(resume_from)["settings"].items():
            if k in settings and k not in ("init_from", "out_dir"):
                globals()[k] = tuple(v) if isinstance(v, list) else v
        settings = configurator.configure(globals(), argv)
    elif init_from == "scratch" and checkpoint.latest(out_dir):
        raise SystemExit(f"error: {out_dir} already holds checkpoints: continue with --init_from=resume, "
                         f"or use another --out_dir (or delete it)")
    for name, val, allowed in (("parallel", parallel, ("ddp", "fsdp")), ("dtype", dtype, ("bfloat16", "float16", "float32")),
                               ("lr_schedule", lr_schedule, ("cosine", "linear"))):
        if val not in allowed:
            raise SystemExit(f"error: {name}={val!r} is not one of {allowed}")
    for name in ("batch_size", "global_batch_size", "log_interval", "block_size"):
        if globals()[name] < 1:
            raise SystemExit(f"error: {name}={globals()[name]} must be at least 1")

    # ------------------------------------------------------------------ distributed init
    distributed = "RANK" in os.environ  # torchrun sets RANK, LOCAL_RANK and WORLD_SIZE
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = f"cuda:{local_rank}" if cuda else "cpu"
    else:
        rank, world = 0, 1
        dev = device if device != "auto" else (
            "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    master = rank == 0
    fsdp = distributed and parallel == "fsdp"
    if global_batch_size % (batch_size * world):
        raise SystemExit(f"error: global_batch_size={global_batch_size} is not a multiple of batch_size * world size "
                         f"= {batch_size} * {world}: change --global_batch_size or --batch_size")
    micro_steps = global_batch_size // (batch_size * world)
    if master:
        os.makedirs(out_dir, exist_ok=True)
        configurator.print_settings(settings)

    # ------------------------------------------------------------------ seeds and precision
    torch.manual_seed(seed)
    device_type = dev.split(":")[0]
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = "float16"  # V100 and older: fp16 with loss scaling instead
        print("note: this GPU has no bfloat16; training in float16 with a GradScaler")
    if fsdp and dtype == "float16":
        raise SystemExit("error: FSDP here runs bfloat16 or float32, not float16: use --dtype=bfloat16")
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores where fp32 remains
    torch.backends.cudnn.allow_tf32 = True
    # FSDP casts the parameters itself (MixedPrecisionPolicy below); everyone else autocasts
    autocast = nullcontext() if ptdtype == torch.float32 or fsdp else torch.autocast(device_type, dtype=ptdtype)
    scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)

    # ------------------------------------------------------------------ data
    import prepare
    meta = prepare.read_meta(data_dir)
    pad_id = meta.get("pad_id")
    pad_id = pad_id if pad_id not in (None, meta.get("bos_id"), meta.get("eos_id")) else None
    rows = meta.get("layout") == "rows"
    if rows:  # chat data: the rows' length is the sequence length
        block_size = meta["seq_len"]
        train_data = prepare.open_rows(data_dir, "train")
        if not len(train_data[0]):
            raise SystemExit(f"error: the train split of {data_dir} holds no conversations: prepare more data, "
                             f"or lower --val_fraction and --test_fraction")
        val_data = prepare.open_rows(data_dir, "val") if meta["splits"].get("val", {}).get("rows") else []
        batch = lambda data, step, micro, stream=0: get_rows(data, step, micro, rank, world, stream)
    else:
        train_data, val_data = open_data("train"), (open_data("val", required=False) if "val" in meta["splits"] else [])
        batch = lambda data, step, micro, stream=0: get_batch(data, step, micro, rank, world, pad_id, stream)
    if eval_interval and not len(val_data) and master:
        print(f"note: {data_dir} has no val split longer than block_size: no val loss")
    if epochs > 0:
        if not rows:
            raise SystemExit(f"error: --epochs needs chat (row) data and {data_dir} is a token stream: set --max_iters")
        max_iters = lr_decay_iters = math.ceil(epochs * len(train_data[0]) / global_batch_size)
    if warmup_ratio > 0:
        warmup_iters = math.ceil(warmup_ratio * max_iters)

    # ------------------------------------------------------------------ model and resume
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    resume_info = checkpoint.read_info(resume_from) if resume_from else {}
    # where the (frozen, for LoRA) weights come from: None = scratch or a full resume; our checkpoint; a HF dir.
    # A LoRA run's checkpoints hold only adapters, so its resume starts again from the base it names.
    base = resume_info.get("lora_base") or (init_from if init_from not in ("scratch", "resume") else None)
    base_ours = checkpoint.resolve(base) if base is not None else None
    if base_ours and checkpoint.read_info(base_ours).get("lora"):  # adapters only: load_model merges them into theirs
        base_ours = None
    if lora_rank and base is None:
        raise SystemExit("error: LoRA trains adapters on a pretrained model: set --init_from to a checkpoint "
                         "or a Hugging Face directory (or --lora_rank=0 to train from scratch)")
    # FSDP never materialises the full model on a rank: it builds on the meta device, shards, then fills the shards
    # (from scratch, a checkpoint, or a resume). A Hugging Face base is loaded in full first, then sharded.
    on_meta = fsdp and (base is None or base_ours is not None)
    if base is None or base_ours:
        config = ModelConfig(**{k: globals()[k] for k in fields})
        known = resume_info or (checkpoint.read_info(base_ours) if base_ours else None)
        if known:  # the architecture is the checkpoint's; only the kernel backend is ours to pick
            config = dataclasses.replace(checkpoint.model_config(known), backend=config.backend)
        torch.manual_seed(seed)  # the initial weights are a function of the seed alone
        with torch.device("meta") if on_meta else nullcontext():
            model = Transformer(config)
    else:  # a Hugging Face or Meta directory, through hf.py (in full on the CPU, then sharded if FSDP)
        model, _ = checkpoint.load_model(base, device="cpu", dtype=torch.float32)
        config = model.config
        model.train()
    if meta["vocab_size"] > config.vocab_size:
        raise SystemExit(f"error: {data_dir}'s tokenizer has {meta['vocab_size']} tokens but the model has "
                         f"vocab_size={config.vocab_size}: set --vocab_size={meta['vocab_size']}")
    if block_size > config.block_size:
        fix = f"prepare the data with --seq_len={config.block_size} or less" if rows else f"set --block_size={config.block_size}"
        raise SystemExit(f"error: training sequences of {block_size} tokens are longer than the model's context "
                         f"({config.block_size}): {fix}")
    lora_config = dict(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets)
    if lora_rank:  # before compile and sharding, so both see the adapters
        import lora
        lora.add(model, **lora_config)
    if activation_checkpointing:  # per block; assigning forward keeps the parameter names unchanged
        from torch.utils.checkpoint import checkpoint as recompute
        for layer in model.layers:
            layer.forward = (lambda f: lambda *a: recompute(f, *a, use_reentrant=False))(layer.forward)
    if compile:  # in place (nn.Module.compile), so state-dict names carry no _orig_mod. prefix
        for m in (model.layers if fsdp else [model]):
            m.compile()
    if fsdp:  # FSDP2: one unit per block plus the root (embedding, final norm, head); bf16 compute, fp32 reduce
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mesh = init_device_mesh(device_type, (world,))
        mp = MixedPrecisionPolicy(param_dtype=ptdtype, reduce_dtype=torch.float32) if ptdtype != torch.float32 else None
        kw = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
        for layer in model.layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        if on_meta:
            model.to_empty(device=dev)  # every rank allocates only its own shards
        if on_meta and base is None and resume_from is None:  # from scratch: one process's numbers, shard by shard
            from torch.distributed.tensor import distribute_tensor
            torch.manual_seed(seed)
            with torch.no_grad():
                for name, p in model.named_parameters():  # the order and draws of Transformer.init_weights()
                    full = torch.empty(p.shape, dtype=p.dtype)  # one full-size parameter at a time, on the CPU
                    model.init_parameter(name, full)
                    p.copy_(distribute_tensor(full.to(dev), p.device_mesh, p.placements))
    model.to(dev)

    # ------------------------------------------------------------------ optimizer (after sharding, so it holds the shards)
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), adam_eps, wd_exclude_1d,
                                           fused=device_type == "cuda")
    step, val_loss = 0, None
    if base_ours and (lora_rank or not resume_from):  # a LoRA resume needs its frozen base too
        checkpoint.load_weights(base_ours, model)
        if master:
            print(f"initialised from {base_ours}")
    if resume_from:
        info = checkpoint.load_train_state(resume_from, model, optimizer)
        step, val_loss = info["step"], info.get("val_loss")
        if master:
            print(f"resumed from {resume_from} at step {step}")
    elif lora_rank:
        lora.init(model, seed)
        torch.manual_seed(seed + rank)  # adapter dropout: a mask stream per rank (rank 0's is one process's)
    raw = model  # the plain module: checkpoints and evaluation use it
    if distributed and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    # ------------------------------------------------------------------ eval and logging helpers
    @torch.no_grad()
    def evaluate():
        """Mean val loss per target token over eval_iters fixed batches per rank (the same every time)."""
        raw.eval()
        nats = torch.zeros(2, device=dev)  # (summed loss, target tokens)
        for i in range(eval_iters):
            x, y = batch(val_data, i, 0, stream=1)
            x, y = x.to(dev), y.to(dev)
            with autocast:
                _, loss = raw(x, y)
            n = (y != IGNORE_INDEX).sum()
            nats += torch.stack([loss.float() * n, n.float()])
        if distributed:
            dist.all_reduce(nats)
        raw.train()
        return (nats[0] / nats[1]).item()

    wandb = None
    if wandb_log and master:
        try:
            import wandb
        except ImportError:
            raise SystemExit("error: --wandb_log=True needs wandb: pip install wandb (or drop --wandb_log)")
        netrc = os.path.expanduser("~/.netrc")
        if "WANDB_API_KEY" not in os.environ and not (os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()):
            os.environ.setdefault("WANDB_MODE", "offline")  # no key: log locally, `wandb sync` later
        wandb.init(project=wandb_project, name=wandb_run_name or os.path.basename(os.path.normpath(out_dir)),
                   config=settings, resume="allow")

    def log(record):
        if log_file:
            with open(log_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if wandb:
            wandb.log(record, step=record["step"])

    def save():
        extra = {"val_loss": val_loss}
        if lora_rank:  # the adapters are only half a model: name the other half
            extra.update(lora=lora_config, lora_base=os.path.abspath(checkpoint.resolve(base) or base))
        return checkpoint.save(out_dir, step, raw, optimizer, settings, data_dir=data_dir, keep_last=keep_last, extra=extra)

    # ------------------------------------------------------------------ the loop
    tokens_per_step = global_batch_size * block_size
    flops_per_token = raw.flops_per_token(block_size)
    if master:
        trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        if trainable < raw.num_params():
            print(f"LoRA: {trainable:,} trainable parameters ({trainable / raw.num_params():.2%})")
        print(f"{raw.num_params() / 1e6:.2f}M parameters | {world} process(es) on {dev} | {micro_steps} micro-step(s) "
              f"of {batch_size}x{block_size} | {tokens_per_step:,} tokens/step | steps {step} -> {max_iters}")
    start_step, t_start = step, time.time()
    t_log, step_log = time.time(), step
    while step < max_iters:
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [batch(train_data, step, m) for m in range(micro_steps)]
        batches = [(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)) for x, y in batches]
        # weight each micro-batch by its share of the step's target tokens, so masked (padded) rows make the
        # step equal to one big batch; DDP/FSDP average over ranks, hence the factor world
        n_targets = sum((y != IGNORE_INDEX).sum() for _, y in batches)
        if distributed:
            dist.all_reduce(n_targets)
        step_loss = torch.zeros((), device=dev)
        for m, (x, y) in enumerate(batches):
            last = m == micro_steps - 1
            if fsdp:  # gradients are reduced across ranks only after the last micro-step
                model.set_requires_gradient_sync(last)
            with (model.no_sync() if distributed and not fsdp and not last else nullcontext()), autocast:
                _, loss = model(x, y)
                loss = loss * ((y != IGNORE_INDEX).sum() * world / n_targets)
            scaler.scale(loss).backward()
            step_loss += loss.detach()
        if distributed:
            dist.all_reduce(step_loss)
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        lossf = step_loss.item() / world
        # stop before the update reaches the weights (fp16's scaler skips inf-gradient steps by itself)
        if not math.isfinite(lossf) or (not scaler.is_enabled() and not torch.isfinite(grad_norm)):
            what = f"the loss became {lossf}" if not math.isfinite(lossf) else f"the gradient norm became {grad_norm.item()}"
            raise SystemExit(f"error: {what} at step {step}; stopped without saving. Last good checkpoint: "
                             f"{checkpoint.latest(out_dir) or 'none'}. Resume from it (--init_from=resume) with a "
                             f"lower --learning_rate, or use --dtype=bfloat16 or float32")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % log_interval == 0 or step == max_iters:
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
                eta = (max_iters - step) * dt
                print(f"step {step}/{max_iters} | loss {lossf:.4f} | lr {lr:.2e} | grad norm {record['grad_norm']:.3f} | "
                      f"{tok_s:,.0f} tok/s | {dt * 1e3:.0f} ms/iter | {record['tflops']:.3f} TFLOP/s"
                      + (f" | mfu {mfu * 100:.1f}%" if mfu is not None else "")
                      + f" | mem {mem:.2f} GB | eta {eta / 60:.1f} min", flush=True)
                log(record)
        if eval_interval and len(val_data) and (step % eval_interval == 0 or step == max_iters):
            val_loss = evaluate()
            if master:
                print(f"step {step}: val loss {val_loss:.4f}", flush=True)
                log({"step": step, "val_loss": val_loss})
        if save_interval >= 0 and (step == max_iters or (save_interval and step % save_interval == 0)):
            path = save()
            if master:
                print(f"saved {path}", flush=True)
    if master:
        took = time.time() - t_start
        print(f"done: {step - start_step} steps ({(step - start_step) * tokens_per_step:,} tokens) in {took / 60:.1f} min"
              f" | last loss {lossf if step > start_step else float('nan'):.4f}"
              + (f" | val loss {val_loss:.4f}" if val_loss is not None else "") + f" | checkpoint {checkpoint.latest(out_dir)}")
    if wandb:
        wandb.finish()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
