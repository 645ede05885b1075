"""
One Transformer for OpenELM and LLaMA/OpenLLaMA. The two families differ only in ModelConfig's data:

  OpenELM (arXiv 2404.14619): layer-wise scaling of query/kv heads and FFN widths, QK-RMSNorm, GQA,
      tied input/output embeddings, head_dim independent of the width, CoreNet's init, z-loss.
  LLaMA (as reproduced by OpenLLaMA): uniform layers, untied lm_head, head_dim = width / heads, N(0, 0.02).

Shared: pre-norm RMSNorm, SwiGLU, no biases, rotate-half RoPE (the Hugging Face weight layout).
OpenELM's rules are CoreNet's (apple/corenet, corenet/modeling/models/language_modeling/general_gpt.py: GPTConfig,
MultiHeadCausalAttention, FeedForwardNetwork, GeneralGPTModel.reset_parameters), LLaMA's are transformers'
modeling_llama.py; each comment below names the function a rule comes from.

Both families run fused projections here (one qkv matmul, one gate+up matmul): fewer, larger kernels.
OpenELM's checkpoints are already laid out that way; hf.py concatenates LLaMA's q/k/v and gate/up on
import and splits them on export.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

import kernels

IGNORE_INDEX = kernels.IGNORE_INDEX  # targets that add nothing to the loss; train.py and bench.py import it here


def make_divisible(v, divisor, min_value=None):
    """Round v to the nearest multiple of divisor, never going below 90% of v (CoreNet math_utils)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def per_layer(mult, n_layer):
    """A multiplier per layer: a number is constant, a pair (lo, hi) is spread linearly over the layers
    and rounded to 2 decimals (GPTConfig.__post_init__ does; without it some widths change), a list of n_layer is
    used as given.
    Mirrors numpy's linspace (i*step + lo, last = hi) and np.round (round(x * 100) / 100) in plain
    Python, so the widths match CoreNet and HF bit for bit without numpy in this file."""
    if isinstance(mult, (int, float)):
        return [float(mult)] * n_layer
    mult = list(mult)
    if len(mult) == 2:
        lo, hi = mult
        step = (hi - lo) / (n_layer - 1) if n_layer > 1 else 0.0
        xs = [i * step + lo for i in range(n_layer)]
        xs[-1] = hi if n_layer > 1 else xs[-1]
        return [round(x * 100) / 100 for x in xs]
    if len(mult) != n_layer:
        raise ValueError(f"a multiplier list must have 2 entries (a range) or n_layer={n_layer}, got {len(mult)}")
    return [float(m) for m in mult]


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    block_size: int = 2048  # longest sequence the model is trained on and caches
    n_layer: int = 12
    n_embd: int = 768  # model width d
    # uniform layers (LLaMA): the same heads and FFN width everywhere
    n_head: int = 12
    n_kv_head: int = 0  # 0 = n_head (multi-head attention); fewer = grouped-query attention
    head_dim: int = 0  # 0 = n_embd // n_head; OpenELM fixes it (64, or 128 for 3B)
    ffn_dim: int = 3072  # SwiGLU hidden width
    # OpenELM layer-wise scaling (GPTConfig.__post_init__): when qkv_multipliers is set, it replaces n_head/n_kv_head/ffn_dim
    qkv_multipliers: Optional[object] = None  # (0.5, 1.0): query width per layer as a fraction of n_embd
    ffn_multipliers: Optional[object] = None  # (0.5, 4.0): FFN width per layer as a multiple of n_embd
    num_gqa_groups: int = 4  # query heads per kv head: a group SIZE (CoreNet: n_kv = n_q // num_gqa_groups)
    ffn_dim_divisor: int = 256
    # family differences
    qk_norm: bool = False  # RMSNorm over head_dim on q and k, before RoPE (OpenELM)
    tie_embeddings: bool = False  # logits = h @ E^T, no lm_head (OpenELM)
    norm_eps: float = 1e-6  # 1e-6 OpenELM/OpenLLaMA/LLaMA-1; 1e-5 Llama-2
    rope_theta: float = 10000.0
    init: str = "normal"  # "normal": N(0, init_std) (LLaMA/EasyLM); "corenet": GeneralGPTModel.reset_parameters
    init_std: float = 0.02
    z_loss: float = 0.0  # OpenELM trains with 1e-4 * mean(logsumexp(logits)^2)
    # not architecture: which kernels run (kernels/__init__.py): auto | triton | sdpa | eager
    backend: str = "auto"

    def __post_init__(self):
        if self.init not in ("normal", "corenet"):
            raise ValueError(f"init must be 'normal' or 'corenet', got {self.init!r}")
        if self.backend not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {self.backend!r}")
        for name, low in (("vocab_size", 1), ("block_size", 1), ("n_layer", 1), ("n_embd", 1), ("n_kv_head", 0),
                          ("head_dim", 0), ("num_gqa_groups", 1), ("ffn_dim_divisor", 1), ("z_loss", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be at least {low}")
        for name in ("norm_eps", "rope_theta", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be above 0")
        for name in ("qkv_multipliers", "ffn_multipliers"):
            m = getattr(self, name)
            if not (m is None or isinstance(m, (int, float)) and not isinstance(m, bool) or isinstance(m, (list, tuple))
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in m)):
                raise ValueError(f"{name} must be a number, a (lo, hi) pair or a per-layer list, got {m!r}")
        if (self.qkv_multipliers is None) != (self.ffn_multipliers is None):
            raise ValueError("layer-wise scaling needs both qkv_multipliers and ffn_multipliers (or neither)")
        if self.qkv_multipliers is None:
            if self.n_head <= 0 or self.ffn_dim <= 0:
                raise ValueError("uniform layers need n_head > 0 and ffn_dim > 0")
            if self.n_head % (self.n_kv_head or self.n_head):
                raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
            if not self.head_dim and self.n_embd % self.n_head:
                raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: set head_dim")
        elif not self.head_dim:
            raise ValueError("layer-wise scaling needs an explicit head_dim")
        elif min(x for m in (self.qkv_multipliers, self.ffn_multipliers)
                 for x in (m if isinstance(m, (list, tuple)) else [m])) <= 0:
            raise ValueError("qkv and ffn multipliers must be above 0")
        else:
            self.layer_dims()  # a list of the wrong length fails here, not at the first forward
        if self.dim_head % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.dim_head}")

    @property
    def dim_head(self):
        return self.head_dim or self.n_embd // self.n_head

    def layer_dims(self):
        """[(query heads, kv heads, FFN width)] for each layer."""
        L, d, hd = self.n_layer, self.n_embd, self.dim_head
        if self.qkv_multipliers is None:
            return [(self.n_head, self.n_kv_head or self.n_head, self.ffn_dim)] * L
        dims = []
        for qm, fm in zip(per_layer(self.qkv_multipliers, L), per_layer(self.ffn_multipliers, L)):
            n_head = int(make_divisible(d * qm, divisor=hd * self.num_gqa_groups)) // hd
            ffn = int(make_divisible(fm * d, divisor=self.ffn_dim_divisor))
            dims.append((n_head, n_head // self.num_gqa_groups, ffn))
        return dims


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, backend):
        super().__init__()
        self.eps, self.backend = eps, backend
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps, backend=self.backend)


class KVCache(nn.Module):
    """Preallocated keys and values of one layer (OpenELM layers differ in kv heads, so one per layer).
    Slot s holds the token at cache position s; attention reads slots up to the newest query's (by a mask, or
    by slicing that prefix), so rewinding after a rejected speculation is just writing the next tokens over the
    stale slots."""

    def __init__(self, batch_size, n_kv_head, max_len, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos, k, v):  # input_pos (T,), k/v (B, Hkv, T, D)
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, config, n_head, n_kv_head):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, config.dim_head
        self.backend = config.backend
        # rows [all q heads | all k heads | all v heads], head-major (MultiHeadCausalAttention: split, not interleaved)
        self.qkv_proj = nn.Linear(config.n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=False)
        self.out_proj = nn.Linear(n_head * self.head_dim, config.n_embd, bias=False)
        if config.qk_norm:  # one weight over head_dim, shared by all heads of the layer
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps, config.backend)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps, config.backend)
        self.kv_cache = None

    def forward(self, x, cos, sin, input_pos=None, mask=None, length=None):
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        q, k, v = qkv.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=2)  # (B, T, H, D)
        if hasattr(self, "q_norm"):  # QK-norm comes before RoPE, as in MultiHeadCausalAttention.forward
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = kernels.apply_rope(q, k, cos, sin, backend=self.backend)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, Hkv, max_len, D)
            if length is not None:  # the filled prefix, causal from the queries' end: no mask to build or apply
                k, v = k[:, :, :length], v[:, :, :length]
        y = kernels.attention(q, k, v, causal=mask is None, mask=mask, backend=self.backend)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, n_embd, ffn_dim, backend):
        super().__init__()
        self.backend = backend
        self.gate_up_proj = nn.Linear(n_embd, 2 * ffn_dim, bias=False)  # rows [gate | up]: FeedForwardNetwork applies SiLU to the first half
        self.down_proj = nn.Linear(ffn_dim, n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(kernels.swiglu(self.gate_up_proj(x), backend=self.backend))


class Block(nn.Module):
    def __init__(self, config, n_head, n_kv_head, ffn_dim):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps, config.backend)
        self.attn = Attention(config, n_head, n_kv_head)
        self.ffn_norm = RMSNorm(config.n_embd, config.norm_eps, config.backend)
        self.ffn = FeedForward(config.n_embd, ffn_dim, config.backend)

    def forward(self, x, cos, sin, input_pos=None, mask=None, length=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, input_pos, mask, length)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        device = torch.empty(0).device  # where the weights go: the default device, or that of a `with torch.device`
        with torch.device("meta"):  # no storage yet, so nn.Linear's own init is not computed only to be replaced
            self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
            self.layers = nn.ModuleList(Block(config, *dims) for dims in config.layer_dims())
            self.norm = RMSNorm(config.n_embd, config.norm_eps, config.backend)
            if not config.tie_embeddings:
                self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if device.type != "meta":  # on the meta device: to_empty() and init_weights() when the storage exists
            self.to_empty(device=device)
            self.init_weights()

    def init_weights(self):
        """Every parameter drawn from the global RNG in named_parameters() order, so one seed gives one model
        however it is built (train.py's FSDP replays this order one full-size parameter at a time)."""
        for name, p in self.named_parameters():
            self.init_parameter(name, p)

    @torch.no_grad()
    def init_parameter(self, name, p):
        c = self.config
        if p.dim() == 1:  # every RMSNorm weight, QK-norm included (there are no biases)
            nn.init.ones_(p)
        elif c.init == "normal":  # LLaMA / EasyLM at the time of OpenLLaMA
            nn.init.normal_(p, mean=0.0, std=c.init_std)
        elif name.endswith(("out_proj.weight", "down_proj.weight")):
            # reset_parameters scales the residual outputs by model width and depth, not by their fan-in
            nn.init.normal_(p, mean=0.0, std=c.n_embd ** -0.5 * (2 * c.n_layer) ** -0.5)
        elif name == "tok_embeddings.weight":
            nn.init.normal_(p, mean=0.0, std=c.n_embd ** -0.5)
        else:  # every other Linear: N(0, fan_in^-0.5)
            nn.init.normal_(p, mean=0.0, std=p.shape[1] ** -0.5)

    # ------------------------------------------------------------------ generation support

    def setup_cache(self, batch_size, max_len=None, dtype=None, device=None):
        """Allocate a static KV cache per layer; forward(idx, input_pos=...) then writes and reads it."""
        max_len = max_len or self.config.block_size
        p = self.tok_embeddings.weight
        for layer in self.layers:
            a = layer.attn
            a.kv_cache = KVCache(batch_size, a.n_kv_head, max_len, a.head_dim, dtype or p.dtype, device or p.device)

    def clear_cache(self):
        for layer in self.layers:
            layer.attn.kv_cache = None

    def rope(self, pos):
        """cos, sin of shape (B or 1, T, head_dim/2) in fp32 for integer positions pos (B or 1, T): rows of a
        table of every position below block_size (or the cache's length, if longer), made on first use per device
        (the same values as computing them per call; not a buffer, so meta-device models need none). Under
        torch.compile, computed in the graph."""
        hd, table = self.config.dim_head, getattr(self, "_rope_table", None)
        cache = self.layers[0].attn.kv_cache
        n = max(self.config.block_size, 0 if cache is None else cache.k.shape[2])  # a cache may outgrow block_size
        if torch.compiler.is_compiling() or table is None or table[0].device != pos.device or len(table[0]) < n:
            inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, hd, 2, device=pos.device).float() / hd))
            if torch.compiler.is_compiling():
                freqs = pos.float().unsqueeze(-1) * inv_freq
                return freqs.cos(), freqs.sin()
            freqs = torch.arange(n, device=pos.device).float().unsqueeze(-1) * inv_freq
            table = self._rope_table = (freqs.cos(), freqs.sin())
        return table[0][pos], table[1][pos]

    def head(self, x):
        """The output projection: the input embedding's transpose when tied (OpenELM), else lm_head."""
        return F.linear(x, self.tok_embeddings.weight) if self.config.tie_embeddings else self.lm_head(x)

    def forward(self, idx, targets=None, input_pos=None, left_pad=None):
        """idx (B, T) token ids. Without input_pos: the whole sequence, causal, no cache (training,
        scoring). With input_pos (T,), the consecutive cache slots of these tokens: decode against the static
        cache; left_pad (B,) counts the padding slots at the start of each row of a left-padded batch."""
        B, T = idx.shape
        mask = length = None
        if input_pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
            pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T)
        elif self.layers[0].attn.kv_cache is None:
            raise RuntimeError("forward with input_pos needs a KV cache: call model.setup_cache() first")
        elif left_pad is None and not torch.compiler.is_compiling():
            # attention reads the cache's prefix up to the newest query, causal from its end: no mask to build
            # or apply (a CUDA graph needs the fixed shapes of the masked form below)
            length, pos = int(input_pos[-1]) + 1, input_pos.unsqueeze(0)
        else:
            slots = torch.arange(self.layers[0].attn.kv_cache.k.shape[2], device=idx.device)
            mask = slots <= input_pos.unsqueeze(-1)  # (T, S): causal by slot, stale slots past input_pos hidden
            pos = input_pos.unsqueeze(0)
            if left_pad is not None:
                mask = mask & (slots >= left_pad.view(B, 1, 1))  # (B, T, S): padding is never attended
                pos = (input_pos.unsqueeze(0) - left_pad.unsqueeze(1)).clamp(min=0)  # (B, T) real positions
            # a query always sees its own slot, so a padding query has one finite key instead of none (NaN)
            mask = (mask | (slots == input_pos.unsqueeze(-1))).unsqueeze(-3)  # (B or 1, 1, T, S)
        cos, sin = self.rope(pos)
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos, mask, length)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        # z-loss keeps the softmax normaliser near 1 (OpenELM recipe). A training regulariser only:
        # eval-mode loss stays plain cross-entropy, so val loss and perplexity compare across runs.
        z_loss = self.config.z_loss if self.training else 0.0
        loss = kernels.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), z_loss,
                                     backend=self.config.backend)
        return logits, loss

    # ------------------------------------------------------------------ training helpers

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token: 6 per weight that multiplies (forward 2, backward 4) plus attention's
        QK^T and AV, 12 * heads * head_dim * T per layer (PaLM appendix B, as nanoGPT). Attention is
        counted over the full T (not halved for causal), so MFU compares with nanoGPT's and PaLM's. Norm weights
        scale elementwise and the input embedding is a lookup: neither multiplies, so neither is counted (an
        untied embedding; a tied one is the output projection too)."""
        T = seq_len or self.config.block_size
        n = sum(p.numel() for p in self.parameters() if p.dim() >= 2)
        n -= 0 if self.config.tie_embeddings else self.tok_embeddings.weight.numel()
        attn = sum(12 * n_head * self.config.dim_head * T for n_head, _, _ in self.config.layer_dims())
        return 6 * n + attn

    def estimate_mfu(self, tokens_per_sec, seq_len=None, device_name=None, peak_flops=None):
        """Model FLOPs utilisation: achieved training FLOP/s over the device's dense bf16 peak. Returns
        None when the device is not in PEAK_FLOPS and no peak_flops is given (CPUs, say)."""
        if peak_flops is None:
            if device_name is None and torch.cuda.is_available():
                device_name = torch.cuda.get_device_name()
            peak_flops = next((v for k, v in PEAK_FLOPS.items() if device_name and k in device_name), None)
        if not peak_flops:
            return None
        return self.flops_per_token(seq_len) * tokens_per_sec / peak_flops

    def configure_optimizers(self, weight_decay, learning_rate, betas, eps=1e-8, exclude_1d=True, fused=None):
        """AdamW. OpenELM (CoreNet) exempts every 1-D parameter (all norm weights) from weight decay;
        LLaMA as EasyLM trained OpenLLaMA decays everything (exclude_1d=False). Neither exempts embeddings."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2 or not exclude_1d]
        no_decay = [p for p in params if p.dim() < 2 and exclude_1d]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if fused is None:  # one kernel for all parameters where PyTorch has it: on a CPU 4-5x faster than foreach
            fused = all(p.device.type in ("cuda", "cpu") for p in params)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)


# Dense bf16 tensor-core peaks (vendor datasheets). Matched by substring of the device name, first hit wins,
# so the more specific names come first. Pass peak_flops to estimate_mfu for anything else.
PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "V100": 125e12,  # fp16: the V100 has no bf16
}
