"""
End-to-end comparisons against the reference implementations, each run side by side in one process. One
sub-command per section:

    python bench.py decode            batch-1 generation: ours vs transformers generate(), prompt lookup, GPU roofline
                                      [--quick] [--new=N] [--threads=N] [--init_from=PATH] [--data_dir=PATH]
    python bench.py train             training tokens/s vs nanoGPT and HF Llama (CPU), elm_tiny vs GPT bits/byte, GPU MFU
    python bench.py train throughput  one part only: throughput | compiled | bpb | mfu; [--rounds=N]
    python bench.py finetune          instruction tuning of elm_tiny on stdlib functions: full vs LoRA (CPU)
    python bench.py gpu               the prepared GPU check (make gpu): [--out=DIR] [--cpu] [--scale=X]

Paths are relative to the repository root, where these run (decode's model: out/llama_tiny; bpb's: out/elm_tiny).

The kernels' own timings (Triton vs SDPA and eager; the CPU ops) are beside them: python -m kernels.bench.
Each section is a plain function taking the remaining arguments; add a new one to SECTIONS.
Numbers are printed, never asserted: timings depend on the machine, its load, clocks and driver.
"""
import contextlib
import copy
import math
import os
import statistics
import sys
import tempfile
import time
import types

import torch
import torch.nn.functional as F

import configurator
import data
import files
import eval as eval_  # the stdlib has no module `eval`, but the builtin eval() would be shadowed
import hf
import train
from configurator import InputError
import kernels.bench as kbench
from kernels.bench import interleaved_seconds
from model import ModelConfig, Transformer

# ----------------------------------------------------------------------------- generation (sample.py)

ROOT = os.path.dirname(os.path.abspath(__file__))


def _config(name, **kw):
    """The ModelConfig of configs/<name>.py."""
    return train.config_of(os.path.join(ROOT, "configs", f"{name}.py"), **kw)


def hf_twin(model):
    """transformers' LlamaForCausalLM of our LLaMA-shaped model, and ours loaded back from it through hf.py: the
    same weights in both implementations (the export and import are the ones users run)."""
    from transformers import LlamaForCausalLM
    with tempfile.TemporaryDirectory() as d:
        hf.save_model(model, d)
        theirs = LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa", torch_dtype=torch.float32)
        return theirs, hf.load_model(d, dtype=torch.float32)


def _options(args):
    """--key=value arguments as a dict of strings (flags such as --quick stay in args)."""
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def _number(opts, key, default, kind=int, least=1):
    """opts[key] as a number of at least `least` (an int unless kind says float), or default when absent; refused
    in one line."""
    value = opts.get(key, default)
    try:
        value = kind(value)
    except ValueError:
        value = None
    if value is None or not value >= least:
        raise InputError(f"--{key} takes a {'whole ' if kind is int else ''}number of at least {least}, got "
                         f"{opts[key]!r}")
    return value


def _best_of(n, fn):
    """fn() returns (output, stats); the fastest of n runs (the CPU is shared, so the best is the cleanest)."""
    runs = [fn() for _ in range(n)]
    return max(runs, key=lambda r: r[1]["tokens_per_s"])


# a 6-layer LLaMA of width 384 (14M parameters): batch-1 decoding reads every weight once per token
DECODE = dict(vocab_size=8192, block_size=512, n_layer=6, n_embd=384, n_head=6, ffn_dim=1024)


def weight_bytes(model):
    """Bytes read per decoded token: every weight and buffer but the input embedding, of which one row is
    read (a tied model's output head reads all of it)."""
    emb = model.tok_embeddings.weight
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return total - (0 if model.config.tie_embeddings else emb.numel() * emb.element_size())


@torch.no_grad()
def minimal_generate(model, prompt, n):
    """Greedy decoding in the style of gpt-fast's generate.py, the plain reference ours must beat: the weights of
    our LLaMA-shaped model, plain PyTorch ops and no modules, a static KV cache of block_size written with
    index_copy_, a causal-mask row per step, RoPE from a precomputed table, SDPA."""
    c, L = model.config, model.config.block_size
    hd, H, Hkv = c.dim_head, c.n_head, c.n_kv_head or c.n_head
    freqs = torch.arange(L).float()[:, None] / (c.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    cos, sin, causal = freqs.cos(), freqs.sin(), torch.ones(L, L, dtype=torch.bool).tril()
    cache = [(torch.zeros(1, Hkv, L, hd), torch.zeros(1, Hkv, L, hd)) for _ in model.layers]
    norm = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps) * w  # noqa: E731

    def rot(x, p):  # x (1, T, H, D), rotate-half pairs
        x1, x2 = x.chunk(2, -1)
        cc, ss = cos[p][None, :, None], sin[p][None, :, None]
        return torch.cat([x1 * cc - x2 * ss, x2 * cc + x1 * ss], -1)

    def forward(idx, p):
        x = F.embedding(idx, model.tok_embeddings.weight)[None]
        for layer, (kc, vc) in zip(model.layers, cache):
            a, f = layer.attn, layer.ffn
            qkv = F.linear(norm(x, layer.attn_norm.weight), a.qkv_proj.weight).view(1, len(p), H + 2 * Hkv, hd)
            q, k, v = qkv.split([H, Hkv, Hkv], 2)
            kc.index_copy_(2, p, rot(k, p).transpose(1, 2))
            vc.index_copy_(2, p, v.transpose(1, 2))
            y = F.scaled_dot_product_attention(rot(q, p).transpose(1, 2), kc, vc, attn_mask=causal[p], enable_gqa=H != Hkv)
            x = x + F.linear(y.transpose(1, 2).reshape(1, len(p), H * hd), a.out_proj.weight)
            gate, up = F.linear(norm(x, layer.ffn_norm.weight), f.gate_up_proj.weight).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, f.down_proj.weight)
        return F.linear(norm(x, model.norm.weight), model.lm_head.weight)[0, -1]

    T = prompt.shape[1]
    out = [int(forward(prompt[0], torch.arange(T)).argmax())]
    for i in range(n - 1):
        out.append(int(forward(torch.tensor(out[-1:]), torch.tensor([T + i])).argmax()))
    return torch.cat([prompt[0], torch.tensor(out)])[None]


def bench_sample(args):
    """Batch-1 decoding speed on this machine's CPU: ours (as `python sample.py` runs it, with int8 weights, and
    compiled) against transformers' generate() and a minimal static-cache decoder written here, on the same
    weights, each also as a share of the memory-bandwidth roofline measured in the same run; prompt-lookup
    speedup on code continuation. (Decoding on a GPU is measured by `python bench.py gpu`.) Options: --quick, --init_from=PATH (a trained checkpoint for the prompt-lookup part; default
    out/llama_tiny if it exists), --new=N tokens, --threads=N."""
    import quantize
    import sample
    opts = _options(args)
    quick, new = "--quick" in args, _number(opts, "new", 128)
    if "init_from" in opts and not os.path.isdir(opts["init_from"]):  # asked for, so no random stand-in
        raise InputError(f"--init_from={opts['init_from']} is not a checkpoint folder: train one, or leave --init_from "
                         f"out (random weights)")
    reps = 1 if quick else 3
    if "threads" in opts:
        torch.set_num_threads(_number(opts, "threads", None))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{load}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))

    # 1. a 14M LLaMA on the CPU, fp32, every decoder on the same weights, in interleaved rounds
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(**DECODE)).eval()
    prompt = torch.randint(3, DECODE["vocab_size"], (1, 16))
    try:
        theirs, ours = hf_twin(ours)
        theirs.eval()
    except ImportError:
        theirs = None
        print("transformers is not installed (pip install transformers): skipping the Hugging Face comparison")
    int8 = quantize.int8(copy.deepcopy(ours))
    timed = lambda fn: (lambda: (lambda t: (fn(), time.perf_counter() - t))(time.perf_counter()))  # noqa: E731
    runs = {"transformers generate()": timed(lambda: theirs.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                do_sample=False, pad_token_id=0)) if theirs is not None else None,
            "minimal static-cache decoder (gpt-fast style)": timed(lambda: minimal_generate(ours, prompt, new)),
            "ours: sample.generate, the default": timed(lambda: sample.generate(ours, prompt, new, greedy=True)),
            "ours: int8 weights (--int8=True)": timed(lambda: sample.generate(int8, prompt, new, greedy=True))}
    runs = {k: v for k, v in runs.items() if v is not None}
    t = time.perf_counter()
    sample.generate(ours, prompt, new, greedy=True, compile=True)  # compiles (inductor; cached on disk after)
    compile_s = time.perf_counter() - t
    runs["ours: compile=True"] = timed(lambda: sample.generate(ours, prompt, new, greedy=True, compile=True))
    best, outputs = {k: float("inf") for k in runs}, {}
    for k, fn in runs.items():
        fn()  # warm-up
    for _ in range(reps):
        for k, fn in runs.items():
            outputs[k], seconds = fn()
            best[k] = min(best[k], seconds)
    gbps = kbench.copy_gbps("cpu")
    ref = runs and best.get("transformers generate()")
    print(f"\nbatch-1 greedy decode, {ours.num_params() / 1e6:.1f}M-parameter LLaMA ({DECODE['n_layer']} layers x "
          f"{DECODE['n_embd']}), fp32, CPU, {prompt.shape[1]}-token prompt, {new} new tokens, best of {reps} "
          f"interleaved rounds; roofline: weight bytes per token at the {gbps:.1f} GB/s a copy reaches here")
    print("| decoder | tokens/s | vs transformers | roofline share | tokens as transformers' |\n|---|---|---|---|---|")
    want = outputs.get("transformers generate()")
    for k in runs:
        tps = new / best[k]
        model = int8 if "int8" in k else ours
        same = "" if want is None else f"{int((outputs[k][0] == want[0]).cumprod(0).sum()) - prompt.shape[1]}/{new}"
        print(f"| {k} | {tps:.0f} | {ref / best[k]:.2f}x | {tps * weight_bytes(model) / 1e9 / gbps:.0%} | {same} |"
              if ref else f"| {k} | {tps:.0f} | - | {tps * weight_bytes(model) / 1e9 / gbps:.0%} | |")
    print(f"compile=True spent {compile_s:.1f} s compiling in this process (inductor's on-disk cache shortens a "
          f"second process's)")

    # 2. prompt lookup on code continuation: prompts cut from the default corpus's validation split
    path = opts.get("init_from", "out/llama_tiny")
    data_dir = opts.get("data_dir", "data/stdlib")
    if not os.path.isfile(os.path.join(data_dir, "meta.json")):
        print(f"\nprompt lookup: {data_dir} not found (python prepare.py makes it): skipped")
    else:
        if os.path.isdir(path):
            import checkpoint
            model, _ = checkpoint.load_model(path)
            what = path
        else:
            model, what = ours.float(), f"the 14M LLaMA above, RANDOM weights ({path} not found: train one for real numbers)"
        val = data.open_split(data_dir, "val")[0]
        T = min(128, model.config.block_size // 2)
        n_new = min(new, model.config.block_size - T)
        plain_tps, pld_tps, proposed, accepted, same = [], [], 0, 0, True
        starts = [int(x) for x in torch.linspace(0, len(val) - T - 1, 2 if quick else 4)]
        for s in starts:
            ids = torch.from_numpy(val[s:s + T].astype("int64"))[None]
            a = _best_of(reps, lambda: (lambda st: (sample.generate(model, ids, n_new, greedy=True, stats=st), st))({}))
            b = _best_of(reps, lambda: (lambda st: (sample.generate(model, ids, n_new, greedy=True, stats=st,
                                                                    prompt_lookup_num_tokens=10), st))({}))
            plain_tps.append(a[1]["tokens_per_s"])
            pld_tps.append(b[1]["tokens_per_s"])
            proposed, accepted = proposed + b[1]["proposed"], accepted + b[1]["accepted"]
            same &= torch.equal(a[0], b[0])
        hm = lambda xs: len(xs) / sum(1 / x for x in xs)  # harmonic mean: the rate of the whole workload
        print(f"\nprompt lookup (k=10, n-gram <= 3), greedy, {what}: {len(starts)} code prompts of {T} tokens "
              f"from {data_dir} val, {n_new} new tokens each")
        print(f"  plain {hm(plain_tps):.1f} tokens/s, prompt lookup {hm(pld_tps):.1f} tokens/s: "
              f"speedup {hm(pld_tps) / hm(plain_tps):.2f}x, {accepted}/{proposed} drafts accepted "
              f"({accepted / max(proposed, 1):.0%}), outputs {'identical' if same else 'DIFFER (bug)'}")


# ----------------------------------------------------------------------------- training (train.py)


class GPT(torch.nn.Module):
    """nanoGPT's GPT-2, the reference elm_tiny must beat: learned positions, LayerNorm, GELU MLP, biases, tied
    head, SDPA causal attention, GPT-2 init. Called like our Transformer: model(idx, targets) -> (logits, loss)."""

    def __init__(self, vocab_size, block_size, n_layer, n_embd, n_head):
        super().__init__()
        nn = torch.nn
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.config = types.SimpleNamespace(vocab_size=vocab_size, block_size=block_size)  # what eval.py reads
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(nn.ModuleDict(dict(
            ln_1=nn.LayerNorm(n_embd), c_attn=nn.Linear(n_embd, 3 * n_embd), c_proj=nn.Linear(n_embd, n_embd),
            ln_2=nn.LayerNorm(n_embd), c_fc=nn.Linear(n_embd, 4 * n_embd), mlp_proj=nn.Linear(4 * n_embd, n_embd)))
            for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        for name, p in self.named_parameters():  # N(0, 0.02); residual projections scaled by 1/sqrt(2L)
            if name.endswith("weight") and p.dim() == 2:
                resid = name.endswith(("c_proj.weight", "mlp_proj.weight"))
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer) if resid else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets=None):
        import torch.nn.functional as F
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.h:
            q, k, v = b.c_attn(b.ln_1(x)).view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b.c_proj(y.transpose(1, 2).reshape(B, T, self.n_embd))
            x = x + b.mlp_proj(F.gelu(b.c_fc(b.ln_2(x))))
        logits = F.linear(self.ln_f(x), self.wte.weight)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T):  # nanoGPT's count: 6 per weight (positions excluded) + attention
        return 6 * (self.num_params() - self.wpe.weight.numel()) + 12 * self.n_layer * self.n_embd * T


GPT_TINY = dict(n_layer=7, n_embd=320, n_head=5)  # 11.3M parameters at vocab 8192: elm_tiny's size (11.0M)


def _hf_loss(hf, x, y):
    import torch.nn.functional as F
    return F.cross_entropy(hf(input_ids=x).logits.float().flatten(0, 1), y.flatten())


def adamw(model):
    """The AdamW each codebase steps with: ours as train.py makes it (configure_optimizers: the fused kernel
    wherever PyTorch has one, a CPU included), nanoGPT's configure_optimizers rule (fused only on CUDA, so
    foreach on a CPU), transformers' Trainer default since torch 2.8 (adamw_torch_fused)."""
    if isinstance(model, Transformer):
        return model.configure_optimizers(0.1, 1e-4, (0.9, 0.95))
    fused = not isinstance(model, GPT) or next(model.parameters()).is_cuda
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)


def _step_timer(model, loss_fn, B, T, vocab, autocast):
    """A closure running one training step (under autocast(), the model's codebase's AdamW, clip) and returning
    its seconds; its .optimizer names the AdamW implementation."""
    opt = adamw(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(vocab, (B, T), generator=g), torch.randint(vocab, (B, T), generator=g)

    def step():
        t = time.perf_counter()
        with autocast():
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t
    step.optimizer = "fused" if opt.defaults["fused"] else "foreach"
    return step


def bench_train_throughput(B=8, T=256, compile=False, precisions=("bf16 autocast", "fp32"), rounds=7):
    """Training tokens/s and FLOP/s on this machine's CPU: elm_tiny and llama_tiny (ours) against nanoGPT's GPT
    and transformers' LlamaForCausalLM of matching size, batch B x T, each codebase's AdamW (adamw), in bf16
    autocast and in plain fp32 (each precision its own interleaved rounds). Each model's training FLOPs per
    token are printed beside its speed, so a model that is faster because it does less work shows as such.
    With compile: bf16 only, each model timed both eager and through torch.compile (inductor), in the same
    turns. More rounds tell a margin of a few percent from this machine's noise."""
    torch.manual_seed(0)
    elm, llama = Transformer(_config("elm_tiny", block_size=T)), Transformer(_config("llama_tiny", block_size=T))
    gpt, theirs = GPT(elm.config.vocab_size, T, **GPT_TINY), hf_twin(llama)[0]
    ours = lambda m, x, y: m(x, y)[1]  # noqa: E731
    rows = {"ours: elm_tiny (OpenELM)": (elm, ours, elm.flops_per_token(T)),
            "nanoGPT GPT (7L, 320d)": (gpt, ours, gpt.flops_per_token(T)),
            "ours: llama_tiny": (llama, ours, llama.flops_per_token(T)),
            "HF LlamaForCausalLM (= llama_tiny)": (theirs, _hf_loss, llama.flops_per_token(T))}
    results = {}
    for precision in precisions[:1] if compile else precisions:
        if "bf16" in precision and not train.fast_cpu_bf16():
            print(f"\n{precision}: skipped, this CPU has no fast bfloat16 (train.py trains in float32 here)")
            continue
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "bf16" in precision else contextlib.nullcontext
        steps = {}
        for k, (m, loss, _) in rows.items():
            steps[k] = _step_timer(m, lambda x, y, m=m, loss=loss: loss(m, x, y), B, T, elm.config.vocab_size, autocast)
            if compile:  # compiles at the warm-up step
                c = torch.compile(m)
                steps[k + ", compiled"] = _step_timer(m, lambda x, y, c=c, loss=loss: loss(c, x, y), B, T,
                                                      elm.config.vocab_size, autocast)
        times = interleaved_seconds(steps, rounds, per_round=True)
        secs = results[precision] = {k: statistics.median(t) for k, t in times.items()}
        print(f"\ntraining throughput, CPU ({torch.get_num_threads()} threads), {precision}, batch {B}x{T}, each "
              f"codebase's AdamW; seconds per step: the median over {rounds} interleaved rounds of each round's "
              f"median of 3 steps")
        if compile:
            print("| model | eager ms/step | torch.compile ms/step | compiled / eager |\n|---|---|---|---|")
            for k in rows:
                print(f"| {k} | {secs[k] * 1e3:.0f} | {secs[k + ', compiled'] * 1e3:.0f} | "
                      f"{secs[k + ', compiled'] / secs[k]:.2f} |")
            continue
        print("| model | params | MFLOPs/token | AdamW | tokens/s | GFLOP/s | ms/step |\n|---|---|---|---|---|---|---|")
        for k, (m, _, fpt) in rows.items():
            tok_s = B * T / secs[k]
            print(f"| {k} | {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M | {fpt / 1e6:.1f} | "
                  f"{steps[k].optimizer} | {tok_s:,.0f} | {fpt * tok_s / 1e9:.1f} | {secs[k] * 1e3:.0f} |")
        # each round's ratio, of two timings taken back to back, then the median: a load that drifts between
        # rounds cancels in the ratio instead of in two medians taken apart. The count of rounds ours won says
        # whether a margin of a few percent is more than noise
        names = list(rows)
        for name, a, b in (("elm_tiny / GPT", *names[:2]), ("llama_tiny / HF Llama", *names[2:])):
            r = [x / y for x, y in zip(times[a], times[b])]
            print(f"ours / theirs, time per step, {name}: {statistics.median(r):.2f} (the median of the rounds' "
                  f"ratios; ours faster in {sum(x < 1 for x in r)} of {rounds} rounds)")
    return results


def _train_reference(model, iters, data_dir, B, T, lr=1e-3, warmup=50, seed=1337):
    """nanoGPT's recipe for a ~10M model (shakespeare_char: AdamW lr 1e-3, betas 0.9/0.99, decay 0.1 on
    matrices, warmup then cosine to lr/10, clip 1), train.py's precision, on exactly the batches train.py draws."""
    shards = train.open_data(data_dir, "train", T)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))
    model.train()
    context = train.precision("bfloat16", "cpu", False)[1]  # what train.py runs here (float32 without fast bf16)
    t0 = time.time()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = train.lr_at(it, lr, lr / 10, warmup, 0.0, iters)
        x, y = train.get_batch(shards, it, 0, 0, 1, T, B, B, seed)
        with context:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % 50 == 0 or it + 1 == iters:
            el = time.time() - t0
            print(f"  GPT step {it + 1}/{iters} | loss {loss.item():.4f} | {el / 60:.1f} min, eta {el / (it + 1) * (iters - it - 1) / 60:.1f} min", flush=True)
    return time.time() - t0


def bench_train_bpb(run_dir="out/elm_tiny"):
    """elm_tiny as `python train.py configs/elm_tiny.py` trains it, against nanoGPT's GPT of the same size
    trained on the same corpus, tokenizer and batches for the same wall-clock time; bits per byte on the
    test split, which no training or validation batch ever reads."""
    import subprocess
    import checkpoint
    if checkpoint.latest(run_dir) is None:
        print(f"no checkpoint in {run_dir}: training it first (python train.py configs/elm_tiny.py)")
        if subprocess.run([sys.executable, "train.py", "configs/elm_tiny.py", f"--out_dir={run_dir}"]).returncode:
            raise InputError(f"training {run_dir} failed (its error is above): fix that, or train it yourself first")
    ours, _ = checkpoint.load_model(run_dir)
    s = checkpoint.read_info(checkpoint.latest(run_dir))["settings"]
    B, T, iters, data_dir = s["batch_size"], s["block_size"], s["max_iters"], s["data_dir"]
    # same wall-clock: the GPT gets as many steps as fit in the time elm_tiny's steps take on this machine,
    # both timed here in turns (a shared CPU's load then slows both alike)
    torch.manual_seed(0)
    gpt = GPT(ours.config.vocab_size, T, **GPT_TINY)
    context = train.precision("bfloat16", "cpu", False)[1]  # as train.py trains here
    autocast = lambda: context  # noqa: E731
    probe, gpt_probe = copy.deepcopy(ours).train(), copy.deepcopy(gpt)
    secs = interleaved_seconds({
        "ours": _step_timer(probe, lambda x, y: probe(x, y)[1], B, T, ours.config.vocab_size, autocast),
        "gpt": _step_timer(gpt_probe, lambda x, y: gpt_probe(x, y)[1], B, T, ours.config.vocab_size, autocast)})
    gpt_iters = int(iters * secs["ours"] / secs["gpt"])
    print(f"step time: elm_tiny {secs['ours'] * 1e3:.0f} ms, GPT {secs['gpt'] * 1e3:.0f} ms -> GPT trains {gpt_iters} steps "
          f"in the time of elm_tiny's {iters}")
    took = _train_reference(gpt, gpt_iters, data_dir, B, T)
    bpb = lambda m: eval_.token_split_perplexity(m.eval(), data_dir, "test", T, batch=B)["bits_per_byte"]  # noqa: E731
    bpb_ours, bpb_gpt = bpb(ours), bpb(gpt)
    print(f"\nbits per byte on {data_dir} test split (same tokenizer, batches {B}x{T}, equal training time)")
    print("| model | params | steps | bits/byte |\n|---|---|---|---|")
    print(f"| ours: elm_tiny (OpenELM) | {ours.num_params() / 1e6:.2f}M | {iters} | {bpb_ours:.4f} |")
    print(f"| nanoGPT GPT (7L, 320d) | {gpt.num_params() / 1e6:.2f}M | {gpt_iters} ({took / 60:.1f} min) | {bpb_gpt:.4f} |")
    return bpb_ours, bpb_gpt


def _random_data(path, vocab, n_tokens):
    """A data folder of random tokens (throughput does not depend on the text)."""
    import numpy as np
    os.makedirs(path, exist_ok=True)
    np.random.default_rng(0).integers(3, vocab, n_tokens, dtype=np.uint16).tofile(os.path.join(path, "train.bin"))
    split = {"files": ["train.bin"], "tokens": n_tokens, "documents": 1, "bytes": 0}
    data.write_meta(path, {"train": split}, vocab_size=vocab, bos_id=1, eos_id=2, source="random")
    return path


def bench_train_mfu(batch_size=16, iters=30):
    """MFU of train.py itself on the GPUs of this node: OpenELM-270M at context 2048 on one GPU (target >= 40%
    on an H100), then OpenELM-1.1B with FSDP2 over every local GPU. Prints the last logged MFU of each run."""
    import json
    import subprocess
    if not torch.cuda.is_available():
        print("train mfu needs a CUDA GPU: nothing to measure on this machine")
        return
    tmp = tempfile.mkdtemp()
    data = _random_data(os.path.join(tmp, "data"), 32000, 8_000_000)
    ngpu = torch.cuda.device_count()
    common = [f"--data_dir={data}", f"--batch_size={batch_size}", f"--max_iters={iters}", "--log_interval=10",
              "--eval_interval=0", "--save_interval=-1", "--compile=True"]
    runs = [("elm_270m, 1 GPU, T=2048", [sys.executable, "train.py", "configs/elm_270m.py",
                                          f"--global_batch_size={batch_size}"]),
            (f"elm_1_1b, FSDP2 on {ngpu} GPU(s), T=2048", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         f"--nproc_per_node={ngpu}", "train.py", "configs/elm_1_1b.py",
                                                         "--parallel=fsdp", f"--global_batch_size={batch_size * ngpu}"])]
    print(f"\ntrain.py MFU on {torch.cuda.get_device_name()} (bf16, compile, batch {batch_size} x 2048 per GPU)")
    print("| run | tokens/s | MFU | peak memory |\n|---|---|---|---|")
    for name, cmd in runs:
        log = os.path.join(tmp, name.split(",")[0] + ".jsonl")
        out_dir = os.path.join(tmp, "out_" + name.split(",")[0])
        p = subprocess.run(cmd + common + [f"--log_file={log}", f"--out_dir={out_dir}"], capture_output=True, text=True)
        if p.returncode != 0:
            print(f"| {name} | failed: {(p.stderr or p.stdout).strip().splitlines()[-1]} | | |")
            continue
        r = [json.loads(line) for line in open(log) if "mfu" in line][-1]
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {100 * (r['mfu'] or 0):.1f}% | {r['peak_mem_gb']:.1f} GB |")


def bench_train(args):
    """python bench.py train [throughput|compiled|bpb|mfu] [--rounds=7]: throughput, bpb and mfu when no part is
    named (mfu only with a GPU); compiled times every model eager and under torch.compile (a few minutes of
    compiling); --rounds: how many interleaved rounds throughput and compiled take. The loss, norm and RoPE
    alone: python -m kernels.bench ops."""
    rounds = _number(_options(args), "rounds", 7)
    args = [a for a in args if not a.startswith("--rounds=")]
    parts = args or ["throughput", "bpb", "mfu"]
    for part in parts:
        if part not in ("throughput", "compiled", "bpb", "mfu"):
            raise InputError(f"unknown part {part!r} of bench.py train: use throughput, compiled, bpb or mfu")
    train.hold_freed_memory()  # as train.py runs on a CPU: every model here trains with it
    if "throughput" in parts:
        bench_train_throughput(rounds=rounds)
    if "compiled" in parts:
        bench_train_throughput(compile=True, rounds=rounds)
    if "bpb" in parts:
        bench_train_bpb()
    if "mfu" in parts:
        bench_train_mfu()


# ----------------------------------------------------------------------------- finetune (CPU): instruction tuning

def bench_finetune(args, run_dir="out/elm_tiny", steps=150):
    """Instruction tuning on the CPU: elm_tiny (from `make demo`) tuned to answer "write the function f(...)" with its
    stdlib source, fully and with LoRA, the same steps and batches; loss per reply token on held-out functions."""
    import shutil
    import checkpoint
    import lora
    import prepare
    if checkpoint.resolve(run_dir) is None:
        raise InputError(f"bench.py finetune tunes {run_dir}: train it first (make demo)")
    chat = "data/stdlib_chat"
    meta = prepare.prepare_data(chat, source="stdlib_functions", chat_format="messages", seq_len=256, overlong="drop",
                                val_fraction=0.05, test_fraction=0.0, num_proc=1, replace=True,  # this section's own
                                tokenizer=os.path.join(checkpoint.resolve(run_dir), "tokenizer.model"))
    sp = meta["splits"]
    print(f"{sp['train']['rows']} train / {sp['val']['rows']} val stdlib-function conversations "
          f"(dropped {sp['train']['dropped'] + sp['val']['dropped']} longer than 256 tokens)")
    base, tok = checkpoint.load_model(run_dir)
    reply_loss = lambda m: eval_.token_split_perplexity(m, chat, "val", 256, batch=16)["loss"]  # noqa: E731
    rows = [("elm_tiny, not tuned", 0, 0.0, reply_loss(base))]
    common = dict(data_dir=chat, init_from=run_dir, max_iters=steps, lr_decay_iters=steps, batch_size=16,
                  global_batch_size=16, warmup_iters=10, warmup_init_lr=0.0, weight_decay=0.0, lr_schedule="linear",
                  min_lr=0.0, eval_interval=0, save_interval=0, log_interval=25, dtype="bfloat16")
    runs = {"full finetuning": dict(learning_rate=3e-4),
            "LoRA r=16 (alpha 32)": dict(learning_rate=2e-3, lora_rank=16, lora_alpha=32.0, lora_dropout=0.05)}
    for name, kw in runs.items():
        out = "out/bench_finetune_" + ("lora" if "lora_rank" in kw else "full")
        shutil.rmtree(out, ignore_errors=True)
        t = time.time()
        train.main([f"--{k}={v!r}" if not isinstance(v, str) else f"--{k}={v}" for k, v in {**common, **kw, "out_dir": out}.items()])
        minutes = (time.time() - t) / 60
        model, _ = checkpoint.load_model(out)  # LoRA: base + adapters, merged
        counted = lora.add(copy.deepcopy(base), kw["lora_rank"], 1.0) if "lora_rank" in kw else base
        trainable = sum(p.numel() for p in counted.parameters() if p.requires_grad)
        rows.append((name, trainable, minutes, reply_loss(model)))
    print(f"\ninstruction tuning of {run_dir} on stdlib functions, CPU ({torch.get_num_threads()} threads), "
          f"{steps} steps of 16 x 256, bf16 autocast")
    print("| model | trainable params | minutes | loss per reply token (held out) |\n|---|---|---|---|")
    for name, p, m, loss in rows:
        print(f"| {name} | {p / 1e6:.2f}M | {m:.1f} | {loss:.3f} |")


# ----------------------------------------------------------------------------- the GPU check

class Report:
    """gpu_report.md and gpu_report.json in one folder, both rewritten after every section (and table), so a run
    that is killed still leaves everything it measured."""

    def __init__(self, out):
        self.out, self.sections = out, {}
        os.makedirs(out, exist_ok=True)

    def add(self, section, **fields):
        self.sections.setdefault(section, {"tables": {}, "notes": []}).update(fields)
        self.write()

    def table(self, section, title, rows, cols):
        self.sections.setdefault(section, {"tables": {}, "notes": []})["tables"][title] = {"cols": cols, "rows": rows}
        print(kbench.table(rows, cols, title), flush=True)
        self.write()

    def note(self, section, text):
        self.sections.setdefault(section, {"tables": {}, "notes": []})["notes"].append(text)
        print(f"  {section}: {text}", flush=True)
        self.write()

    def write(self):
        from files import write_json, atomic_write
        write_json(os.path.join(self.out, "gpu_report.json"), self.sections)
        md = ["# nanoELM GPU report"]
        for name, sec in self.sections.items():
            md.append(f"\n## {name} ({sec.get('status', 'running')}, {sec.get('seconds', 0):.0f} s)")
            md += [f"- {n}" for n in sec["notes"]]
            md += [kbench.table(t["rows"], t["cols"], f"**{title}**") for title, t in sec["tables"].items()]
        atomic_write(os.path.join(self.out, "gpu_report.md"), "\n".join(md) + "\n")


def _gpu_environment(r, dev, deadline, tiny):
    name = "environment"
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if dev == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gb=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        try:
            import subprocess
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    n = 256 if tiny else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    info["matmul_tflops"] = 2 * n ** 3 / (kbench.time_ms(lambda: a @ a) * 1e-3) / 1e12  # dense bf16: the practical peak
    info["copy_gbps"] = kbench.copy_gbps(dev)
    r.add(name, info=info)
    r.note(name, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()))
    return info


def _gpu_correctness(r, dev, deadline, tiny):
    """Attention at the released models' layer shapes, RMSNorm and RoPE, in bf16 and fp16, against float64."""
    name = "correctness"
    if tiny:  # the interpreter: tiny shapes, and fp32/fp16 (its bf16 tl.dot is wrong)
        shapes, lengths, dtypes = [("tiny gqa4 d16", 4, 1, 16), ("tiny d20", 2, 2, 20)], [1, 17, 40], (torch.float32, torch.float16)
    else:  # (name, Hq, Hkv, head_dim): OpenELM-270M's first and last layers, OpenELM-1.1B's last, OpenLLaMA-3B,
        # LLaMA-7B, and GQA 8 at Llama-2-70B's heads
        shapes = [("elm_270m L0", 12, 3, 64), ("elm_270m L15", 20, 5, 64), ("elm_1_1b L27", 32, 8, 64),
                  ("open_llama_3b", 32, 32, 100), ("llama_7b", 32, 32, 128), ("gqa8 d128", 64, 8, 128)]
        lengths, dtypes = [1, 100, 2048, 4097], (torch.bfloat16, torch.float16)
    # T = 1 is a decode step against a long cache (the split-KV path); the others are fwd+bwd, causal
    cases = [(f"{n} T={T}", 1, hq, hkv, T, T if T > 1 else lengths[-1], d, T > 1) for n, hq, hkv, d in shapes for T in lengths]
    cases += [(f"{n} Tq<Tk", 1, hq, hkv, lengths[1], lengths[-1], d, True) for n, hq, hkv, d in shapes]
    cols = ["case", "dtype", "Tq", "Tk", "causal", "path", "triton err", "sdpa err", "ok"]
    for dtype in dtypes:
        rows = kbench.attention_errors(cases, dtype, dev, deadline)
        r.table(name, f"attention, {str(dtype)[6:]}: error vs float64 beside SDPA's (ok: within 2x)", rows, cols)
        if len(rows) < len(cases):
            r.note(name, f"budget spent after {len(rows)} of {len(cases)} {dtype} attention cases")
            return
    widths, head_dims = ([32, 48], [16, 20]) if tiny else ([1280, 2048, 3200, 4096], [64, 100, 128])
    rows = [row for dtype in dtypes for row in kbench.norm_rope_errors(widths, head_dims, dtype, dev)]
    r.table(name, "RMSNorm (model and QK-norm) and RoPE: error vs float64 beside eager's", rows,
            ["op", "D", "dtype", "triton err", "eager err", "ok"])


def _gpu_speed(r, dev, deadline, tiny, roofline):
    name = "kernel speed"
    dtype = torch.float32 if tiny else torch.bfloat16
    shapes = [("gqa4 d16", 4, 1, 16)] if tiny else [("d64 gqa4", 32, 8, 64), ("d128", 32, 32, 128), ("d128 gqa4", 32, 8, 128)]
    seqlens = [32] if tiny else [1024, 2048, 4096, 8192, 16384]
    backends = ["triton"] + ([f"sdpa-{n}" for n, _ in kbench._sdpa_backends()] if dev == "cuda" else ["sdpa-math"]) + ["eager"]
    rows = kbench.attention_speed(shapes, seqlens, dtype, dev, 64 if tiny else 16384, deadline)
    r.table(name, "attention TFLOP/s (B*T = 16k; ratio = triton / best SDPA; target >= 1.1 forward, 1.0 backward)",
            rows, ["shape", "T", "mask", "pass", *backends, "ratio"])
    cols = ["triton", "eager", "% roofline", "speedup"]
    norms = [(64, 32)] if tiny else [(16384, 1280), (16384, 4096), (16384 * 16, 64)]
    r.table(name, f"RMSNorm GB/s (copy roofline {roofline:.0f} GB/s; target >= 80%)",
            kbench.norm_speed(norms, dtype, dev, roofline, deadline), ["rows x D", "pass", *cols])
    ropes = [("tiny", 1, 16, 4, 1, 16)] if tiny else [("openelm", 8, 2048, 16, 4, 64), ("llama7b", 4, 2048, 32, 32, 128)]
    r.table(name, f"RoPE GB/s (copy roofline {roofline:.0f} GB/s; target >= 80%)",
            kbench.rope_speed(ropes, dtype, dev, roofline, deadline), ["shape", "pass", *cols])
    lengths = [64] if tiny else [4096, 16384, 65536]
    r.table(name, "decode (Tq = 1): Triton split-KV against SDPA (ratio > 1: Triton faster)",
            kbench.decode_speed(lengths, (1,), dtype, dev, (4, 1, 16) if tiny else (32, 8, 128), deadline),
            ["B", "Tk", "triton us", "sdpa us", "triton GB/s", "sdpa GB/s", "ratio"])
    if time.time() > deadline:
        r.note(name, "budget spent: the tables above stop where it ran out")


def _gpu_training(r, dev, deadline, tiny, env):
    """train.py itself: elm_270m at context 2048 in bf16 on one GPU, Triton against SDPA, eager and compiled."""
    import json
    import subprocess
    name = "training"
    tmp = tempfile.mkdtemp()
    data = _random_data(os.path.join(tmp, "data"), 32000, 2_000_000 if not tiny else 20_000)
    arch = ["configs/elm_270m.py"] if not tiny else ["configs/elm_tiny.py", "--n_layer=1", "--block_size=32",
                                                      "--vocab_size=32000", "--dtype=float32"]
    steps, batch = (30, 8) if not tiny else (2, 1)
    runs = [("triton", False), ("sdpa", False)] + ([] if tiny else [("triton", True), ("sdpa", True)])
    rows, curves = [], {}
    for backend, compiled in runs:
        left = deadline - time.time()
        if left < 20:
            r.note(name, f"budget spent before backend={backend} compile={compiled}")
            break
        log = os.path.join(tmp, f"{backend}{compiled}.jsonl")
        cmd = [sys.executable, "train.py", *arch, f"--data_dir={data}", f"--out_dir={os.path.join(tmp, f'out_{backend}{compiled}')}",
               f"--batch_size={batch}", f"--global_batch_size={batch}", f"--max_iters={steps}", "--log_interval=1",
               "--eval_interval=0", "--save_interval=-1", f"--backend={backend}", f"--compile={compiled}",
               f"--device={dev}", f"--log_file={log}", "--warmup_iters=5"]
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            r.note(name, f"backend={backend} compile={compiled} did not finish in the {left:.0f} s left")
            break
        if p.returncode != 0:
            r.note(name, f"backend={backend} compile={compiled} failed: {(p.stderr or p.stdout).strip().splitlines()[-1]}")
            continue
        log = [json.loads(line) for line in open(log)]
        curves[(backend, compiled)] = [x["loss"] for x in log]
        last = log[-5:]  # the steady state: compile and autotuning are behind it
        tok_s = sum(x["tokens_per_s"] for x in last) / len(last)
        fpt = log[-1]["tflops"] * 1e12 / log[-1]["tokens_per_s"]
        rows.append({"backend": backend, "compile": compiled, "tokens/s": tok_s, "MFU (datasheet)": log[-1]["mfu"],
                     "of measured bf16 matmul": fpt * tok_s / (env["matmul_tflops"] * 1e12),
                     "peak GB": log[-1]["peak_mem_gb"], "final loss": log[-1]["loss"]})
        r.table(name, f"train.py, {arch[0]} at context {2048 if not tiny else 32}, batch {batch}, {steps} steps", rows,
                list(rows[0]))
    for compiled in (False, True):
        a, b = curves.get(("triton", compiled)), curves.get(("sdpa", compiled))
        if a and b:
            diff = max(abs(x - y) / abs(y) for x, y in zip(a, b))
            r.note(name, f"compile={compiled}: the triton and sdpa loss curves differ by at most {diff:.2%} "
                         f"({'within' if diff < 0.02 else 'BEYOND'} bf16 noise, 2%)")


def _gpu_decoding(r, dev, deadline, tiny, env):
    """OpenELM-1.1B's shape with random weights, bf16, batch 1, compiled: tokens/s against the roofline; and the
    prompt-lookup speedup on repetitive text."""
    import sample
    name = "decoding"
    cfg = train.config_of(os.path.join(ROOT, "configs", "elm_tiny.py" if tiny else "elm_1_1b.py"))
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to(torch.bfloat16 if not tiny else torch.float32).to_empty(device=dev)
    model.init_weights()
    model.eval()
    wbytes, n_new = weight_bytes(model), 16 if tiny else 256
    prompt = torch.randint(3, cfg.vocab_size, (1, 16), device=dev)
    rows = []
    for compiled in ((False,) if tiny else (False, True)):
        if time.time() > deadline:
            r.note(name, "budget spent")
            break
        sample.generate(model, prompt, n_new, greedy=True, compile=compiled)  # warm-up: compiles, records graphs
        st = {}
        sample.generate(model, prompt, n_new, greedy=True, compile=compiled, stats=st)
        rows.append({"decoder": "compiled + CUDA graphs" if compiled else "eager", "tokens/s": st["tokens_per_s"],
                     "GB/s of weights": st["tokens_per_s"] * wbytes / 1e9,
                     "roofline share": st["tokens_per_s"] * wbytes / 1e9 / env["copy_gbps"]})
        r.table(name, f"batch-1 decode, {cfg.n_layer}-layer OpenELM ({model.num_params() / 1e9:.2f}B, {wbytes / 1e9:.2f} GB); "
                      f"roofline: {env['copy_gbps']:.0f} GB/s copy (target >= 60%)", rows, list(rows[0]))
    text = torch.tensor([[3 + (i % 37) for i in range(96)]], device=dev)  # a repeating pattern: lookup finds it
    st_plain, st_pld = {}, {}
    a = sample.generate(model, text, n_new, greedy=True, stats=st_plain)
    b = sample.generate(model, text, n_new, greedy=True, prompt_lookup_num_tokens=10, stats=st_pld)
    r.note(name, f"prompt lookup on repetitive text: {st_pld['tokens_per_s'] / st_plain['tokens_per_s']:.2f}x "
                 f"({st_pld['accepted']}/{st_pld['proposed']} drafts accepted), outputs "
                 f"{'identical' if torch.equal(a, b) else 'DIFFER'}")


def _gpu_tests(r, dev, deadline, tiny):
    import subprocess
    name = "GPU tests"
    left = max(10, deadline - time.time())
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_kernels.py", "-p",
                            "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=left)
        lines = p.stdout.strip().splitlines()
        r.note(name, f"pytest -m gpu tests/test_kernels.py: {lines[-1] if lines else p.stderr[-300:]}")
        failed = [line for line in lines if line.startswith("FAILED")]
        for line in failed[:20]:
            r.note(name, line)
    except subprocess.TimeoutExpired:
        r.note(name, f"pytest -m gpu did not finish in {left:.0f} s")


def bench_gpu(args):
    """python bench.py gpu [--out=DIR] [--cpu]: the one prepared run for a GPU machine (make gpu). Sections in order
    of value, each with its own time budget (skipped with a note when its budget is spent), the report rewritten
    after each: environment and measured rooflines; kernel correctness at real shapes; kernel speed; train.py
    itself; decoding; the CUDA-only tests. About 8 minutes on an H100/H200. --cpu walks every section's code on
    tiny shapes under Triton's interpreter (the test suite runs it), so the script cannot rot without a GPU."""
    opts = _options(args)
    tiny = "--cpu" in args
    if tiny and os.environ.get("TRITON_INTERPRET") != "1":  # read when triton is imported, which torch does
        raise InputError("bench.py gpu --cpu runs the Triton kernels in their interpreter: "
                         "TRITON_INTERPRET=1 python bench.py gpu --cpu")
    if not tiny and not torch.cuda.is_available():
        raise InputError("bench.py gpu needs a CUDA GPU; --cpu runs its code paths on tiny shapes here")
    dev, scale = ("cpu" if tiny else "cuda"), _number(opts, "scale", 1.0, float, least=0)  # scale: every budget times this
    files.check_output(opts.get("out", "gpu_report"), "--out", folder=True)
    r = Report(opts.get("out", "gpu_report"))
    budgets = {"environment": 20, "correctness": 110, "kernel speed": 100, "training": 150, "decoding": 50,
               "GPU tests": 50}
    env = None
    for section, fn in (("environment", lambda d: _gpu_environment(r, dev, d, tiny)),
                        ("correctness", lambda d: _gpu_correctness(r, dev, d, tiny)),
                        ("kernel speed", lambda d: _gpu_speed(r, dev, d, tiny, env["copy_gbps"])),
                        ("training", lambda d: _gpu_training(r, dev, d, tiny, env)),
                        ("decoding", lambda d: _gpu_decoding(r, dev, d, tiny, env)),
                        ("GPU tests", lambda d: _gpu_tests(r, dev, d, tiny))):
        t0 = time.time()
        print(f"\n== {section} (budget {budgets[section] * scale:.0f} s)", flush=True)
        try:
            out = fn(t0 + budgets[section] * scale)
            env = out if section == "environment" else env
            status = "done"
        except Exception as e:  # a section that breaks is reported, and the next one still runs
            import traceback
            status = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            r.note(section, "".join(traceback.format_exception(e)[-3:]).strip().replace("\n", " | ")[:600])
            if env is None:
                env = {"copy_gbps": 1.0, "matmul_tflops": 1.0}
        r.add(section, status=status, seconds=time.time() - t0)
    print(f"\nreport: {os.path.join(r.out, 'gpu_report.md')} and gpu_report.json")


SECTIONS = {"decode": bench_sample, "train": bench_train, "finetune": bench_finetune, "gpu": bench_gpu}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SECTIONS:
        what = f"unknown section {sys.argv[1]!r}" if len(sys.argv) > 1 else "no section given"
        print(f"error: {what}: use python bench.py {{{'|'.join(SECTIONS)}}} (the module docstring lists their options)",
              file=sys.stderr)
        sys.exit(2)
    configurator.main(SECTIONS[sys.argv[1]], sys.argv[2:])
