"""
LoRA (Hu et al. 2021, arXiv 2106.09685): y = W x + (alpha / r) * B A dropout(x), with W frozen and only the
low-rank A (r x in) and B (out x r) trained. train.py adds adapters with --lora_rank=N; checkpoint.py saves
only the trainable (adapter) weights and load_model() merges them into the base, so sample.py, eval.py and
`export.py` see an ordinary model.

    add(model, rank=16, alpha=32.0, dropout=0.05, targets="qkv_proj,out_proj,gate_up_proj,down_proj")
    init(model, seed)    # A as nn.Linear initialises a weight, B = 0: the model's output starts unchanged
    merge(model)         # W += (alpha / r) B A, adapters removed: a plain Transformer again

Our projections are fused (qkv_proj holds q, k and v; gate_up_proj holds gate and up), so an adapter on
qkv_proj is one rank-r update of the fused matrix, not one per q/k/v as on Hugging Face's split layers.
The base weight keeps its name (layers.0.attn.qkv_proj.weight), so loading base weights is unchanged.
"""
import math
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import InputError

TARGETS = ("qkv_proj", "out_proj", "gate_up_proj", "down_proj")  # every linear layer of a block


class LoRALinear(nn.Module):
    """A frozen nn.Linear's weight (the same Parameter, not a copy) plus a trainable low-rank update."""

    def __init__(self, base, rank, alpha, dropout):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features, **kw))  # filled by init()
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **kw))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale


def target_names(targets):
    """["qkv_proj", ...] from "qkv_proj,out_proj" (or a list), checked."""
    names = [t.strip() for t in targets.split(",") if t.strip()] if isinstance(targets, str) else list(targets)
    if not names or any(t not in TARGETS for t in names):
        raise InputError(f"lora_targets must name projections from {','.join(TARGETS)} (got {targets!r}): fix "
                         f"--lora_targets")
    return names


def add(model, rank, alpha, dropout=0.0, targets=",".join(TARGETS)):
    """Freeze every parameter and put an adapter on each nn.Linear whose name is in `targets`."""
    names = target_names(targets)
    if rank < 1:
        raise InputError(f"LoRA needs lora_rank >= 1 (got {rank}): fix --lora_rank")
    most = max(min(m.in_features, m.out_features) for block in model.layers for parent in (block.attn, block.ffn)
               for name in names if isinstance(m := getattr(parent, name, None), nn.Linear))
    if rank > most:  # a rank-r update of an m x n matrix has rank at most min(m, n): more is only memory
        raise InputError(f"lora_rank={rank} exceeds {most}, the highest rank any adapted matrix can have (the smaller "
                         f"of its sides): at {most} the adapters can already make any update")
    model.requires_grad_(False)
    for block in model.layers:
        for parent in (block.attn, block.ffn):
            for name in names:
                if isinstance(getattr(parent, name, None), nn.Linear):
                    setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
    return model


def adapters(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@torch.no_grad()
def init(model, seed):
    """A ~ nn.Linear's kaiming-uniform, B = 0. Each A comes from a generator seeded by (seed, its name) on the
    CPU and is then sharded if FSDP sharded it, so one process, DDP and FSDP start from the same adapters."""
    for name, m in adapters(model):
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        bound = 1 / math.sqrt(m.in_features)  # kaiming_uniform_(a=sqrt(5)) as nn.Linear.reset_parameters
        a = (torch.rand(m.lora_A.shape, generator=g) * 2 - 1) * bound
        for p, full in ((m.lora_A, a), (m.lora_B, torch.zeros(m.lora_B.shape))):
            if hasattr(p, "device_mesh"):  # an FSDP2 DTensor: keep only this rank's shard
                from torch.distributed.tensor import distribute_tensor
                full = distribute_tensor(full.to(p.device), p.device_mesh, p.placements)
            p.copy_(full)


@torch.no_grad()
def merge(model):
    """Fold each adapter into its weight (in float32, then back to the weight's dtype) and remove it."""
    for name, m in adapters(model):
        w = m.weight
        w.copy_((w.float() + (m.lora_B.float() @ m.lora_A.float()) * m.scale).to(w.dtype))
        plain = nn.Linear(m.in_features, m.out_features, bias=False, device="meta")
        plain.weight = w
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, plain)
    return model
