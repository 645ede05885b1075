"""
End-to-end comparisons against the reference implementations, each run side by side in one process. One
sub-command per section:

    python bench.py decode            batch-1 generation: ours vs transformers generate(), prompt lookup, GPU roofline
    python bench.py train             training tokens/s vs nanoGPT and HF Llama (CPU), elm_tiny vs GPT bits/byte, GPU MFU
    python bench.py train throughput  one part only: throughput | compiled | bpb | mfu
    python bench.py finetune          instruction tuning of elm_tiny on stdlib functions: full vs LoRA (CPU)

The kernels' own timings (Triton vs SDPA and eager; the CPU ops) are beside them: python -m kernels.bench.
Each section is a plain function taking the remaining arguments; add a new one to SECTIONS.
Numbers are printed, never asserted: timings depend on the machine, its load, clocks and driver.
"""
import math
import os
import sys
import tempfile
import time

import torch

import configurator
import data
import eval as eval_  # the stdlib has no module `eval`, but the builtin eval() would be shadowed
import hf
import train
from configurator import InputError
from kernels.bench import interleaved_seconds
from model import Transformer

# ----------------------------------------------------------------------------- generation (sample.py)

# HBM bandwidth in TB/s from the vendors' datasheets (H100 SXM5 3.35, H200 4.8, A100 80GB 2.04)
HBM_TBPS = {"H100 PCIe": 2.0, "H100 NVL": 3.9, "H100": 3.35, "GH200": 4.0, "H200": 4.8, "A100": 2.04}
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


def _best_of(n, fn):
    """fn() returns (output, stats); the fastest of n runs (the CPU is shared, so the best is the cleanest)."""
    runs = [fn() for _ in range(n)]
    return max(runs, key=lambda r: r[1]["tokens_per_s"])


def bench_sample(args):
    """Batch-1 decoding speed: ours against Hugging Face generate() on the same weights (llama_tiny shape,
    CPU), prompt-lookup speedup on code continuation, and on a GPU an OpenELM-1.1B-shaped model in bf16
    with compile against the memory-bandwidth roofline. Options: --quick, --init_from=PATH (a trained
    checkpoint for the prompt-lookup part; default out/llama_tiny if it exists), --new=N tokens, --threads=N."""
    import sample
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    quick, new = "--quick" in args, int(opts.get("new", 200))
    reps = 1 if quick else 3
    if "threads" in opts:
        torch.set_num_threads(int(opts["threads"]))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{load}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))

    # 1. the llama_tiny shape on the CPU: our static-cache loop against transformers' generate()
    cfg = _config("llama_tiny")
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    prompt = torch.randint(3, cfg.vocab_size, (1, 16))
    new = min(new, cfg.block_size - prompt.shape[1])
    try:
        theirs, ours = hf_twin(ours)
        theirs.eval()
    except ImportError:
        theirs = None
        print("transformers is not installed (pip install transformers): skipping the Hugging Face comparison")
    fmt = lambda x, w: f"{'-':>{w}}" if x is None else f"{x:>{w}.1f}"  # noqa: E731

    def run_ours(model, compile=False):
        st = {}
        return sample.generate(model, prompt, new, greedy=True, compile=compile, stats=st), st

    print(f"\nbatch-1 greedy decode, llama_tiny shape ({ours.num_params() / 1e6:.1f}M params, CPU), "
          f"{prompt.shape[1]}-token prompt, {new} new tokens: tokens/s, best of {reps}")
    if theirs is not None:
        def run_hf():
            t0 = time.perf_counter()
            with torch.no_grad():
                out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                      min_new_tokens=new, do_sample=False, pad_token_id=0)
            return out, {"tokens_per_s": (out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t0)}
        print(f"  transformers {__import__('transformers').__version__} generate() ({theirs.config._attn_implementation} "
              f"attention) against sample.generate: eager, and with the decode step compiled (inductor)")
    print(f"  {'dtype':<10}{'transformers':>13}{'ours eager':>12}{'ours compiled':>15}{'speedup':>9}  agreement")
    for dtype in (torch.float32, torch.bfloat16):
        ours.to(dtype)
        if theirs is not None:
            theirs.to(dtype)
        runs = []
        for _ in range(reps):  # interleaved, so each contender sees the same machine load
            runs.append((run_hf() if theirs is not None else None, run_ours(ours)))
        ref = max((r[0] for r in runs), key=lambda r: r[1]["tokens_per_s"]) if theirs is not None else None
        eager = max((r[1] for r in runs), key=lambda r: r[1]["tokens_per_s"])
        try:
            run_ours(ours, compile=True)  # compiles (tens of seconds on a small CPU)
            compiled = _best_of(reps, lambda: run_ours(ours, compile=True))
        except Exception as e:  # inductor needs a C++ compiler; say why and go on
            print(f"  (compile failed: {type(e).__name__}: {str(e).splitlines()[0][:100]})")
            compiled = None
        best = max(eager[1]["tokens_per_s"], compiled[1]["tokens_per_s"] if compiled else 0)
        agree = ""
        if ref is not None:
            same = int((eager[0] == ref[0]).all(0).cumprod(0).sum()) - prompt.shape[1]
            agree = f"eager = transformers for the first {same}/{new} tokens"
        print(f"  {str(dtype)[6:]:<10}{fmt(ref and ref[1]['tokens_per_s'], 13)}{eager[1]['tokens_per_s']:12.1f}"
              f"{fmt(compiled and compiled[1]['tokens_per_s'], 15)}"
              + (f"{best / ref[1]['tokens_per_s']:8.2f}x" if ref else f"{'-':>9}") + f"  {agree}", flush=True)
    print("  speedup = our best / transformers, same weights and dtype (target >= 2x)")

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
            model, what = ours.float(), f"llama_tiny with RANDOM weights ({path} not found: train one for real numbers)"
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

    # 3. GPU: OpenELM-1.1B shape, bf16, batch 1, compiled decode step with CUDA graphs, against the roofline
    if not torch.cuda.is_available():
        print("\nGPU roofline (OpenELM-1.1B, bf16, compile): no CUDA device here; run `python bench.py decode` on one")
        return
    cfg = _config("elm_1_1b")
    with torch.device("meta"):
        big = Transformer(cfg)
    big = big.to(torch.bfloat16).to_empty(device="cuda")
    big.init_weights()
    big.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in big.parameters())  # tied: read once per token
    name = torch.cuda.get_device_name()
    tbps = next((v for k, v in HBM_TBPS.items() if k in name), None)
    prompt = torch.randint(3, cfg.vocab_size, (1, 16), device="cuda")
    n_new = 256 if quick else 512
    print(f"\n{name}: OpenELM-1.1B shape ({big.num_params() / 1e9:.2f}B params, {weight_bytes / 1e9:.2f} GB bf16), "
          f"batch 1, {n_new} new tokens")
    for compile in (False, True):
        st = {}
        sample.generate(big, prompt, n_new, greedy=True, compile=compile)  # warm-up: compiles, records graphs
        sample.generate(big, prompt, n_new, greedy=True, compile=compile, stats=st)
        tps = st["tokens_per_s"]
        gbps = tps * weight_bytes / 1e9
        roof = f", {100 * gbps / (tbps * 1e3):.0f}% of the {tbps} TB/s roofline ({tbps * 1e12 / weight_bytes:.0f} tokens/s)" if tbps else ""
        print(f"  {'compiled + CUDA graphs' if compile else 'eager':<24}{tps:8.1f} tokens/s, {gbps:6.0f} GB/s of weights{roof}")
    print("  target: >= 60% of the roofline with compile")



# ----------------------------------------------------------------------------- training (train.py)


class GPT(torch.nn.Module):
    """nanoGPT's GPT-2, the reference elm_tiny must beat: learned positions, LayerNorm, GELU MLP, biases, tied
    head, SDPA causal attention, GPT-2 init. Called like our Transformer: model(idx, targets) -> (logits, loss)."""

    def __init__(self, vocab_size, block_size, n_layer, n_embd, n_head):
        super().__init__()
        nn = torch.nn
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
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


def _step_timer(model, loss_fn, B, T, vocab, autocast):
    """A closure running one training step (bf16 autocast, AdamW, clip) and returning its seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
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
    return step


def bench_train_throughput(B=8, T=256, compile=False):
    """Training tokens/s and FLOP/s on this machine's CPU: elm_tiny and llama_tiny (ours) against nanoGPT's GPT
    and transformers' LlamaForCausalLM of matching size, all bf16 autocast, batch B x T, AdamW. With compile,
    each model is timed both eager and through torch.compile (inductor), in the same turns."""
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    torch.manual_seed(0)
    elm, llama = Transformer(_config("elm_tiny", block_size=T)), Transformer(_config("llama_tiny", block_size=T))
    gpt, theirs = GPT(elm.config.vocab_size, T, **GPT_TINY), hf_twin(llama)[0]
    ours = lambda m, x, y: m(x, y)[1]  # noqa: E731
    rows = {"ours: elm_tiny (OpenELM)": (elm, ours, elm.flops_per_token(T)),
            "nanoGPT GPT (7L, 320d)": (gpt, ours, gpt.flops_per_token(T)),
            "ours: llama_tiny": (llama, ours, llama.flops_per_token(T)),
            "HF LlamaForCausalLM (= llama_tiny)": (theirs, _hf_loss, llama.flops_per_token(T))}
    steps = {}
    for k, (m, loss, _) in rows.items():
        steps[k] = _step_timer(m, lambda x, y, m=m, loss=loss: loss(m, x, y), B, T, elm.config.vocab_size, autocast)
        if compile:  # compiles at the warm-up step
            c = torch.compile(m)
            steps[k + ", compiled"] = _step_timer(m, lambda x, y, c=c, loss=loss: loss(c, x, y), B, T,
                                                  elm.config.vocab_size, autocast)
    secs = interleaved_seconds(steps)
    print(f"\ntraining throughput, CPU ({torch.get_num_threads()} threads), bf16 autocast, batch {B}x{T}, AdamW")
    if compile:
        print("| model | eager ms/step | torch.compile ms/step | compiled / eager |\n|---|---|---|---|")
        for k in rows:
            print(f"| {k} | {secs[k] * 1e3:.0f} | {secs[k + ', compiled'] * 1e3:.0f} | {secs[k + ', compiled'] / secs[k]:.2f} |")
        return secs
    print("| model | params | tokens/s | GFLOP/s | ms/step |\n|---|---|---|---|---|")
    for k, (m, _, fpt) in rows.items():
        tok_s = B * T / secs[k]
        print(f"| {k} | {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M | {tok_s:,.0f} | {fpt * tok_s / 1e9:.1f} | {secs[k] * 1e3:.0f} |")
    return secs


def _train_reference(model, iters, data_dir, B, T, lr=1e-3, warmup=50, seed=1337):
    """nanoGPT's recipe for a ~10M model (shakespeare_char: AdamW lr 1e-3, betas 0.9/0.99, decay 0.1 on
    matrices, warmup then cosine to lr/10, clip 1), bf16 autocast, on exactly the batches train.py draws."""
    shards = train.open_data(data_dir, "train", T)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))
    model.train()
    t0 = time.time()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = train.lr_at(it, lr, lr / 10, warmup, 0.0, iters)
        x, y = train.get_batch(shards, it, 0, 0, 1, T, B, B, seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
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
        subprocess.run([sys.executable, "train.py", "configs/elm_tiny.py", f"--out_dir={run_dir}"], check=True)
    ours, _ = checkpoint.load_model(run_dir)
    s = checkpoint.read_info(checkpoint.latest(run_dir))["settings"]
    B, T, iters, data_dir = s["batch_size"], s["block_size"], s["max_iters"], s["data_dir"]
    # same wall-clock: the GPT gets as many steps as fit in the time elm_tiny's steps take on this machine,
    # both timed here in turns (a shared CPU's load then slows both alike)
    torch.manual_seed(0)
    gpt = GPT(ours.config.vocab_size, T, **GPT_TINY)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    import copy
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
    """python bench.py train [throughput|compiled|bpb|mfu]: throughput, bpb and mfu when no part is named (mfu
    only with a GPU); compiled times every model eager and under torch.compile (a few minutes of compiling). The
    loss, norm and RoPE alone: python -m kernels.bench ops."""
    parts = args or ["throughput", "bpb", "mfu"]
    for part in parts:
        if part not in ("throughput", "compiled", "bpb", "mfu"):
            raise InputError(f"unknown part {part!r} of bench.py train: use throughput, compiled, bpb or mfu")
    if "throughput" in parts:
        bench_train_throughput()
    if "compiled" in parts:
        bench_train_throughput(compile=True)
    if "bpb" in parts:
        bench_train_bpb()
    if "mfu" in parts:
        bench_train_mfu()


# ----------------------------------------------------------------------------- finetune (CPU): instruction tuning

def bench_finetune(args, run_dir="out/elm_tiny", steps=150):
    """Instruction tuning on the CPU: elm_tiny (from `make demo`) tuned to answer "write the function f(...)" with its
    stdlib source, fully and with LoRA, the same steps and batches; loss per reply token on held-out functions."""
    import copy
    import shutil
    import checkpoint
    import lora
    import prepare
    if checkpoint.resolve(run_dir) is None:
        raise InputError(f"bench.py finetune tunes {run_dir}: train it first (make demo)")
    chat = "data/stdlib_chat"
    meta = prepare.prepare_data(chat, source="stdlib_functions", chat_format="messages",
                                tokenizer=os.path.join(checkpoint.resolve(run_dir), "tokenizer.model"), seq_len=256,
                                overlong="drop", val_fraction=0.05, test_fraction=0.0, num_proc=1)
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


SECTIONS = {"decode": bench_sample, "train": bench_train, "finetune": bench_finetune}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SECTIONS:
        print(f"usage: python bench.py {{{'|'.join(SECTIONS)}}} [--quick]")
        sys.exit(1)
    configurator.main(SECTIONS[sys.argv[1]], sys.argv[2:])
