"""
Benchmarks against the reference paths. One sub-command per section:

    python bench.py kernels           Triton attention / RMSNorm / RoPE / decode vs SDPA and eager (GPU)
    python bench.py kernels --quick   the same on fewer shapes
    python bench.py decode            batch-1 generation: ours vs transformers generate(), prompt lookup, GPU roofline
    python bench.py train             training tokens/s vs nanoGPT and HF Llama (CPU), elm_tiny vs GPT bits/byte, GPU MFU
    python bench.py train throughput  one part only: throughput | ops | compiled | bpb | mfu
    python bench.py finetune          instruction tuning of elm_tiny on stdlib functions: full vs LoRA (CPU)

Each section is a plain function taking the remaining arguments; add a new one to SECTIONS.
Numbers are printed, never asserted: timings depend on the GPU, its clocks and the driver.
FLOP conventions follow spec/performance.md section 0: attention forward = 4 * B * Hq * Tq * Tk * D,
halved when causal, backward = 2.5 x forward, GQA counted by query heads.
"""
import math
import sys

import torch

import kernels

# ----------------------------------------------------------------------------- helpers


def _time_ms(fn, grad_to_none=None):
    """Median milliseconds of fn() on the GPU (triton's do_bench: warm-up, L2 flush, CUDA events)."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def _try(fn):
    """Runs a timing; a backend that cannot take the shape or runs out of memory gives None."""
    try:
        return fn()
    except (RuntimeError, ValueError, NotImplementedError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if "out of memory" in str(e).lower():
            torch.cuda.empty_cache()
        return None


def _fmt(x, width=8, digits=0):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def _copy_gbps():
    """Practical bandwidth roofline: a large device-to-device copy (reads + writes, in GB/s)."""
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / (_time_ms(lambda: y.copy_(x)) * 1e-3) / 1e9


# ----------------------------------------------------------------------------- attention

def _sdpa_backends():
    """(name, context manager factory) for each SDPA backend this torch build has."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = [("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION")]
    return [(n, lambda b=getattr(SDPBackend, attr): sdpa_kernel(b)) for n, attr in names
            if hasattr(SDPBackend, attr)]


def _sdpa_fn(ctx, q, k, v, causal):
    """SDPA through one backend. Backends without native GQA get K/V repeated per query head, which is
    what a user of that backend would have to do."""
    def run():
        with ctx():
            try:
                return kernels.attention(q, k, v, causal, backend="sdpa")
            except RuntimeError:
                if q.shape[1] == k.shape[1]:
                    raise
                g = q.shape[1] // k.shape[1]
                return kernels.attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), causal,
                                         backend="sdpa")
    return run


def bench_attention(quick):
    dtype = torch.bfloat16
    seqlens = [1024, 4096] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    # spec section 1 uses B * T = 16k tokens; OpenELM: head_dim 64 with 4 query heads per kv head,
    # LLaMA-7B: 32 heads of 128
    shapes = [("openelm d64 gqa4", 32, 8, 64), ("llama7b d128", 32, 32, 128)]
    backends = _sdpa_backends()
    cols = ["triton"] + [f"sdpa-{n}" for n, _ in backends] + ["eager"]
    print(f"\nattention, {dtype}, TFLOP/s (B*T = 16k tokens; ratio = triton / best SDPA)")
    print(f"{'shape':<18}{'T':>6} {'mask':<7}{'pass':<5}" + "".join(f"{c:>15}" for c in cols) + f"{'ratio':>8}")
    for name, Hq, Hkv, D in shapes:
        for T in seqlens:
            B = max(1, 16384 // T)
            q = torch.randn(B, Hq, T, D, device="cuda", dtype=dtype, requires_grad=True)
            k = torch.randn(B, Hkv, T, D, device="cuda", dtype=dtype, requires_grad=True)
            v = torch.randn(B, Hkv, T, D, device="cuda", dtype=dtype, requires_grad=True)
            do = torch.randn(B, Hq, T, D, device="cuda", dtype=dtype)
            for causal in (True, False):
                flops = 4 * B * Hq * T * T * D / (2 if causal else 1)
                fns = [lambda: kernels.attention(q, k, v, causal, backend="triton")]
                fns += [_sdpa_fn(ctx, q, k, v, causal) for _, ctx in backends]
                # eager materializes (B, Hq, T, T) fp32 scores several times over: skip where that OOMs
                fits = B * Hq * T * T * 4 * 4 < 0.5 * torch.cuda.get_device_properties(0).total_memory
                fns.append((lambda: kernels.attention(q, k, v, causal, backend="eager")) if fits else None)
                for pas in ("fwd", "bwd"):
                    tflops = []
                    for fn in fns:
                        if fn is None:
                            tflops.append(None)
                            continue
                        if pas == "fwd":
                            with torch.no_grad():
                                ms = _try(lambda: _time_ms(fn))
                            work = flops
                        else:
                            out = _try(fn)
                            ms = None if out is None else _try(lambda: _time_ms(
                                lambda: out.backward(do, retain_graph=True), grad_to_none=[q, k, v]))
                            del out
                            work = 2.5 * flops
                        tflops.append(None if ms is None else work / (ms * 1e-3) / 1e12)
                    sdpa = [t for t in tflops[1:-1] if t is not None]
                    ratio = tflops[0] / max(sdpa) if sdpa and tflops[0] else None
                    print(f"{name:<18}{T:>6} {'causal' if causal else 'full':<7}{pas:<5}"
                          + "".join(_fmt(t, 15) for t in tflops) + _fmt(ratio, 8, 2), flush=True)
            del q, k, v, do
            torch.cuda.empty_cache()


def bench_decode(quick):
    """One new token per sequence against a long KV cache (spec section 1F shapes: 32 q / 8 kv heads, d128)."""
    dtype = torch.bfloat16
    lengths = [4096, 65536] if quick else [4096, 8192, 16384, 32768, 65536]
    print(f"\ndecode (Tq = 1), {dtype}, Hq 32 / Hkv 8, d128: microseconds and KV-cache GB/s")
    print(f"{'B':>3}{'Tk':>7}{'triton us':>11}{'sdpa us':>10}{'triton GB/s':>13}{'sdpa GB/s':>11}{'ratio':>8}")
    for B in (1, 8):
        for Tk in lengths:
            q = torch.randn(B, 32, 1, 128, device="cuda", dtype=dtype)
            k = torch.randn(B, 8, Tk, 128, device="cuda", dtype=dtype)
            v = torch.randn_like(k)
            kv_bytes = 2 * k.numel() * k.element_size()
            with torch.no_grad():
                tri = _try(lambda: _time_ms(lambda: kernels.attention(q, k, v, backend="triton")))
                ref = _try(lambda: _time_ms(lambda: kernels.attention(q, k, v, backend="sdpa")))
            gbps = [None if t is None else kv_bytes / (t * 1e-3) / 1e9 for t in (tri, ref)]
            ratio = ref / tri if tri and ref else None  # > 1: triton is faster
            print(f"{B:>3}{Tk:>7}" + _fmt(tri and tri * 1e3, 11) + _fmt(ref and ref * 1e3, 10)
                  + _fmt(gbps[0], 13) + _fmt(gbps[1], 11) + _fmt(ratio, 8, 2), flush=True)
            del q, k, v
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- RMSNorm, RoPE

def bench_rmsnorm(quick, roofline):
    dtype = torch.bfloat16
    # model norms of OpenELM-270M (1280), OpenLLaMA-3B (3200), LLaMA-7B (4096); QK-norm over head_dim 64
    shapes = [(16384, 4096), (16384 * 16, 64)] if quick else \
        [(16384, 1280), (16384, 3200), (16384, 4096), (16384 * 16, 64)]
    print(f"\nRMSNorm, {dtype}, GB/s (copy roofline {roofline:.0f} GB/s)")
    print(f"{'rows x D':>14}{'pass':>6}{'triton':>9}{'eager':>9}{'% roof':>8}{'speedup':>9}")
    for N, D in shapes:
        x = torch.randn(N, D, device="cuda", dtype=dtype, requires_grad=True)
        w = torch.ones(D, device="cuda", dtype=dtype, requires_grad=True)
        dy = torch.randn_like(x)
        nbytes = x.numel() * x.element_size()
        for pas, traffic in (("fwd", 2 * nbytes), ("bwd", 3 * nbytes)):  # x in, y out / x, dy in, dx out
            res = []
            for backend in ("triton", "eager"):
                if pas == "fwd":
                    with torch.no_grad():
                        ms = _time_ms(lambda: kernels.rms_norm(x, w, 1e-6, backend=backend))
                else:
                    y = kernels.rms_norm(x, w, 1e-6, backend=backend)
                    ms = _time_ms(lambda: y.backward(dy, retain_graph=True), grad_to_none=[x, w])
                res.append(traffic / (ms * 1e-3) / 1e9)
            print(f"{f'{N}x{D}':>14}{pas:>6}" + _fmt(res[0], 9) + _fmt(res[1], 9)
                  + _fmt(100 * res[0] / roofline, 8) + _fmt(res[0] / res[1], 9, 2), flush=True)


def bench_rope(quick, roofline):
    dtype = torch.bfloat16
    shapes = [("openelm", 8, 2048, 16, 4, 64), ("llama7b", 4, 2048, 32, 32, 128)]
    print(f"\nRoPE (q and k), {dtype}, GB/s (copy roofline {roofline:.0f} GB/s)")
    print(f"{'shape':>10}{'pass':>6}{'triton':>9}{'eager':>9}{'% roof':>8}{'speedup':>9}")
    for name, B, T, Hq, Hkv, D in shapes[:1] if quick else shapes:
        q = torch.randn(B, T, Hq, D, device="cuda", dtype=dtype, requires_grad=True)
        k = torch.randn(B, T, Hkv, D, device="cuda", dtype=dtype, requires_grad=True)
        angle = torch.arange(T, device="cuda")[None, :, None] * torch.rand(D // 2, device="cuda")
        cos, sin = angle.cos(), angle.sin()
        traffic = 2 * (q.numel() + k.numel()) * q.element_size()  # read and write q and k
        for pas in ("fwd", "bwd"):
            res = []
            for backend in ("triton", "eager"):
                if pas == "fwd":
                    with torch.no_grad():
                        ms = _time_ms(lambda: kernels.apply_rope(q, k, cos, sin, backend=backend))
                else:
                    out = kernels.apply_rope(q, k, cos, sin, backend=backend)
                    grads = [torch.randn_like(t) for t in out]
                    ms = _time_ms(lambda: torch.autograd.backward(out, grads, retain_graph=True),
                                  grad_to_none=[q, k])
                res.append(traffic / (ms * 1e-3) / 1e9)
            print(f"{name:>10}{pas:>6}" + _fmt(res[0], 9) + _fmt(res[1], 9) + _fmt(100 * res[0] / roofline, 8)
                  + _fmt(res[0] / res[1], 9, 2), flush=True)


def bench_kernels(args):
    quick = "--quick" in args
    if not torch.cuda.is_available():
        print("bench.py kernels: needs a CUDA GPU (none found here); nothing was timed")
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench.py kernels: needs triton (pip install triton); nothing was timed")
        return
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}{', quick' if quick else ''}")
    roofline = _copy_gbps()
    bench_attention(quick)
    bench_decode(quick)
    bench_rmsnorm(quick, roofline)
    bench_rope(quick, roofline)


# ----------------------------------------------------------------------------- generation (sample.py)

HBM_TBPS = {"H100 PCIe": 2.0, "H100 NVL": 3.9, "H100": 3.35, "GH200": 4.0, "H200": 4.8, "A100": 2.04}  # spec section 0


def _config(name, **kw):
    """ModelConfig from configs/<name>.py (architecture keys only)."""
    import dataclasses
    import os
    from model import ModelConfig
    scope = {}
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", f"{name}.py")).read(), {}, scope)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{**{k: v for k, v in scope.items() if k in fields}, **kw})


def _best_of(n, fn):
    """fn() returns (output, stats); the fastest of n runs (the CPU is shared, so the best is the cleanest)."""
    runs = [fn() for _ in range(n)]
    return max(runs, key=lambda r: r[1]["tokens_per_s"])


def bench_sample(args):
    """Batch-1 decoding speed: ours against Hugging Face generate() on the same weights (llama_tiny shape,
    CPU), prompt-lookup speedup on code continuation, and on a GPU an OpenELM-1.1B-shaped model in bf16
    with compile against the memory-bandwidth roofline. Options: --quick, --init_from=PATH (a trained
    checkpoint for the prompt-lookup part; default out/llama_tiny if it exists), --new=N tokens, --threads=N."""
    import os
    import time
    import sample
    from model import Transformer
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    quick, new = "--quick" in args, int(opts.get("new", 200))
    reps = 1 if quick else 3
    if "threads" in opts:
        torch.set_num_threads(int(opts["threads"]))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{load}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))

    # 1. the llama_tiny shape on the CPU: our static-cache loop against transformers' generate()
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        LlamaForCausalLM = None
        print("transformers is not installed (pip install transformers): skipping the Hugging Face comparison")
    cfg = _config("llama_tiny")
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    prompt = torch.randint(3, cfg.vocab_size, (1, 16))
    new = min(new, cfg.block_size - prompt.shape[1])
    hf = None

    def run_ours(model, compile=False):
        st = {}
        return sample.generate(model, prompt, new, greedy=True, compile=compile, stats=st), st

    print(f"\nbatch-1 greedy decode, llama_tiny shape ({ours.num_params() / 1e6:.1f}M params, CPU), "
          f"{prompt.shape[1]}-token prompt, {new} new tokens: tokens/s, best of {reps}")
    if LlamaForCausalLM is not None:
        hf = LlamaForCausalLM(LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_dim,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head or cfg.n_head,
            rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, max_position_embeddings=cfg.block_size,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
        sd = {"tok_embeddings.weight": hf.model.embed_tokens.weight, "norm.weight": hf.model.norm.weight,
              "lm_head.weight": hf.lm_head.weight}
        for i, layer in enumerate(hf.model.layers):  # our fused layouts: [q | k | v] and [gate | up]
            a, m = layer.self_attn, layer.mlp
            sd.update({f"layers.{i}.attn_norm.weight": layer.input_layernorm.weight,
                       f"layers.{i}.ffn_norm.weight": layer.post_attention_layernorm.weight,
                       f"layers.{i}.attn.qkv_proj.weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                       f"layers.{i}.attn.out_proj.weight": a.o_proj.weight,
                       f"layers.{i}.ffn.gate_up_proj.weight": torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                       f"layers.{i}.ffn.down_proj.weight": m.down_proj.weight})
        ours.load_state_dict({k: v.detach() for k, v in sd.items()})

        def run_hf():
            t0 = time.perf_counter()
            with torch.no_grad():
                out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False)
            return out, {"tokens_per_s": (out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t0)}
        print(f"  transformers {__import__('transformers').__version__} generate() ({hf.config._attn_implementation} "
              f"attention) against sample.generate: eager, and with the decode step compiled (inductor)")
    print(f"  {'dtype':<10}{'transformers':>13}{'ours eager':>12}{'ours compiled':>15}{'speedup':>9}  agreement")
    for dtype in (torch.float32, torch.bfloat16):
        ours.to(dtype)
        if hf is not None:
            hf.to(dtype)
        runs = []
        for _ in range(reps):  # interleaved, so each contender sees the same machine load
            runs.append((run_hf() if hf is not None else None, run_ours(ours)))
        ref = max((r[0] for r in runs), key=lambda r: r[1]["tokens_per_s"]) if hf is not None else None
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
        print(f"  {str(dtype)[6:]:<10}{_fmt(ref and ref[1]['tokens_per_s'], 13, 1)}{eager[1]['tokens_per_s']:12.1f}"
              f"{_fmt(compiled and compiled[1]['tokens_per_s'], 15, 1)}"
              + (f"{best / ref[1]['tokens_per_s']:8.2f}x" if ref else f"{'-':>9}") + f"  {agree}", flush=True)
    print("  speedup = our best / transformers, same weights and dtype (target >= 2x)")

    # 2. prompt lookup on code continuation: prompts cut from the default corpus's validation split
    import prepare
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
        val = prepare.open_split(data_dir, "val")[0]
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


def _hf_llama(c):
    """transformers' LlamaForCausalLM with exactly llama_tiny's shape."""
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.ffn_dim,
                                        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                                        num_key_value_heads=c.n_kv_head or c.n_head, max_position_embeddings=c.block_size,
                                        rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
                                        attn_implementation="sdpa"))


def _hf_loss(hf, x, y):
    import torch.nn.functional as F
    return F.cross_entropy(hf(input_ids=x).logits.float().flatten(0, 1), y.flatten())


def _step_timer(model, loss_fn, B, T, vocab, autocast):
    """A closure running one training step (bf16 autocast, AdamW, clip) and returning its seconds."""
    import time
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


def _interleaved_seconds(steps, rounds=5, n=3):
    """Fastest seconds per step of each closure, run in turns so a busy shared CPU slows all of them alike."""
    best = {name: float("inf") for name in steps}
    for name, s in steps.items():
        s()  # warm-up (allocator, first-call overheads)
    for _ in range(rounds):
        for name, s in steps.items():
            best[name] = min(best[name], sorted(s() for _ in range(n))[n // 2])
    return best


def bench_train_throughput(B=8, T=256, compile=False):
    """Training tokens/s and FLOP/s on this machine's CPU: elm_tiny and llama_tiny (ours) against nanoGPT's GPT
    and transformers' LlamaForCausalLM of matching size, all bf16 autocast, batch B x T, AdamW. With compile,
    each model is timed both eager and through torch.compile (inductor), in the same turns."""
    from model import Transformer
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    torch.manual_seed(0)
    elm, llama = Transformer(_config("elm_tiny", block_size=T)), Transformer(_config("llama_tiny", block_size=T))
    gpt, hf = GPT(elm.config.vocab_size, T, **GPT_TINY), _hf_llama(llama.config)
    ours = lambda m, x, y: m(x, y)[1]  # noqa: E731
    rows = {"ours: elm_tiny (OpenELM)": (elm, ours, elm.flops_per_token(T)),
            "nanoGPT GPT (7L, 320d)": (gpt, ours, gpt.flops_per_token(T)),
            "ours: llama_tiny": (llama, ours, llama.flops_per_token(T)),
            "HF LlamaForCausalLM (= llama_tiny)": (hf, _hf_loss, llama.flops_per_token(T))}
    steps = {}
    for k, (m, loss, _) in rows.items():
        steps[k] = _step_timer(m, lambda x, y, m=m, loss=loss: loss(m, x, y), B, T, elm.config.vocab_size, autocast)
        if compile:  # compiles at the warm-up step
            c = torch.compile(m)
            steps[k + ", compiled"] = _step_timer(m, lambda x, y, c=c, loss=loss: loss(c, x, y), B, T,
                                                  elm.config.vocab_size, autocast)
    secs = _interleaved_seconds(steps)
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


def bench_train_ops(B=8, T=256, V=8192):
    """Forward + backward of the elementwise ops that separate elm_tiny from the GPT, at its shapes on this CPU:
    our autograd Functions (what the model runs) against autograd through the eager reference and against what
    nanoGPT runs in their place (F.cross_entropy, F.layer_norm)."""
    import time
    import torch.nn.functional as F
    from kernels import CrossEntropy
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(B * T, V, generator=g).bfloat16(), torch.randint(V, (B * T,), generator=g)
    resid, w = torch.randn(B, T, 384, generator=g), torch.ones(384, requires_grad=True)
    q, qw = torch.randn(B, T, 12, 64, generator=g).bfloat16()[:, :, :8], torch.ones(64, requires_grad=True)  # q of qkv
    rq, angle = torch.randn(B, T, 8, 64, generator=g), torch.randn(1, T, 32, generator=g)
    cos, sin = angle.cos(), angle.sin()

    def timed(fn, x):
        def step():
            leaf = x.detach().requires_grad_()
            t = time.perf_counter()
            out = fn(leaf)
            out.backward(torch.ones_like(out) if out.dim() else None)
            return time.perf_counter() - t
        return step

    z = lambda x: F.cross_entropy(x.float(), targets) + 1e-4 * torch.logsumexp(x.float(), -1).pow(2).mean()  # noqa: E731
    cases = {
        ("loss with z-loss, 2048x8192 bf16 logits", "ours: model.CrossEntropy"): timed(lambda x: CrossEntropy.apply(x, targets, 1e-4), logits),
        ("loss with z-loss, 2048x8192 bf16 logits", "F.cross_entropy + logsumexp"): timed(z, logits),
        ("loss without z-loss", "ours: model.CrossEntropy"): timed(lambda x: CrossEntropy.apply(x, targets, 0.0), logits),
        ("loss without z-loss", "nanoGPT: F.cross_entropy"): timed(lambda x: F.cross_entropy(x.float(), targets), logits),
        ("residual RMSNorm, 8x256x384 fp32", "ours: kernels.RMSNormTorch"): timed(lambda x: kernels.RMSNormTorch.apply(x, w, 1e-6), resid),
        ("residual RMSNorm, 8x256x384 fp32", "autograd through kernels.rms_norm_eager"): timed(lambda x: kernels.rms_norm_eager(x, w, 1e-6), resid),
        ("residual RMSNorm, 8x256x384 fp32", "nanoGPT: F.layer_norm"): timed(lambda x: F.layer_norm(x, (384,), w), resid),
        ("QK-norm, 8x256x8x64 bf16 slice", "ours: kernels.RMSNormTorch"): timed(lambda x: kernels.RMSNormTorch.apply(x, qw, 1e-6), q),
        ("QK-norm, 8x256x8x64 bf16 slice", "autograd through kernels.rms_norm_eager"): timed(lambda x: kernels.rms_norm_eager(x, qw, 1e-6), q),
        ("RoPE, 8x256x8x64 fp32", "ours: kernels.RoPETorch"): timed(lambda x: kernels.RoPETorch.apply(x, cos, sin), rq),
        ("RoPE, 8x256x8x64 fp32", "autograd through kernels.rope_eager"): timed(lambda x: kernels.rope_eager(x, cos, sin), rq),
    }
    secs = _interleaved_seconds(cases)
    print(f"\nforward + backward on this CPU ({torch.get_num_threads()} threads), fastest median of 3 over 5 rounds")
    print("| op | implementation | ms |\n|---|---|---|")
    for (op, impl), sec in secs.items():
        print(f"| {op} | {impl} | {sec * 1e3:.2f} |")


@torch.no_grad()
def bits_per_byte(model, data_dir, split="test", T=256, B=8):
    """Every token of the split after the first predicted once, in windows of T; nats / ln 2 / the split's bytes."""
    import numpy as np
    import torch.nn.functional as F
    import prepare
    meta, nats = prepare.read_meta(data_dir), 0.0
    model.eval()
    for shard in prepare.open_split(data_dir, split):
        ids = torch.from_numpy(np.asarray(shard, dtype=np.int64))
        starts = list(range(0, len(ids) - 1, T))
        full = [s for s in starts if s + T + 1 <= len(ids)]
        batches = [full[i:i + B] for i in range(0, len(full), B)] + [[s] for s in starts if s + T + 1 > len(ids)]
        for batch in batches:
            n = min(T, len(ids) - 1 - batch[0])
            x = torch.stack([ids[s:s + n] for s in batch])
            y = torch.stack([ids[s + 1:s + n + 1] for s in batch])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
    return nats / math.log(2) / meta["splits"][split]["bytes"]


def _train_reference(model, iters, data_dir, B, T, lr=1e-3, warmup=50, seed=1337):
    """nanoGPT's recipe for a ~10M model (shakespeare_char: AdamW lr 1e-3, betas 0.9/0.99, decay 0.1 on
    matrices, warmup then cosine to lr/10, clip 1), bf16 autocast, on exactly the batches train.py draws."""
    import time
    import train
    train.data_dir, train.block_size, train.batch_size, train.global_batch_size, train.seed = data_dir, T, B, B, seed
    train.learning_rate, train.min_lr, train.warmup_iters, train.warmup_init_lr, train.lr_decay_iters = \
        lr, lr / 10, warmup, 0.0, iters
    shards = train.open_data("train")
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))
    model.train()
    t0 = time.time()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = train.lr_at(it)
        x, y = train.get_batch(shards, it, 0, 0, 1)
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
    secs = _interleaved_seconds({
        "ours": _step_timer(probe, lambda x, y: probe(x, y)[1], B, T, ours.config.vocab_size, autocast),
        "gpt": _step_timer(gpt_probe, lambda x, y: gpt_probe(x, y)[1], B, T, ours.config.vocab_size, autocast)})
    gpt_iters = int(iters * secs["ours"] / secs["gpt"])
    print(f"step time: elm_tiny {secs['ours'] * 1e3:.0f} ms, GPT {secs['gpt'] * 1e3:.0f} ms -> GPT trains {gpt_iters} steps "
          f"in the time of elm_tiny's {iters}")
    took = _train_reference(gpt, gpt_iters, data_dir, B, T)
    bpb_ours, bpb_gpt = bits_per_byte(ours, data_dir, "test", T, B), bits_per_byte(gpt, data_dir, "test", T, B)
    print(f"\nbits per byte on {data_dir} test split (same tokenizer, batches {B}x{T}, equal training time)")
    print(f"| model | params | steps | bits/byte |\n|---|---|---|---|")
    print(f"| ours: elm_tiny (OpenELM) | {ours.num_params() / 1e6:.2f}M | {iters} | {bpb_ours:.4f} |")
    print(f"| nanoGPT GPT (7L, 320d) | {gpt.num_params() / 1e6:.2f}M | {gpt_iters} ({took / 60:.1f} min) | {bpb_gpt:.4f} |")
    return bpb_ours, bpb_gpt


def _random_data(path, vocab, n_tokens):
    """A data folder of random tokens (throughput does not depend on the text)."""
    import json
    import os
    import numpy as np
    os.makedirs(path, exist_ok=True)
    np.random.default_rng(0).integers(3, vocab, n_tokens, dtype=np.uint16).tofile(os.path.join(path, "train.bin"))
    split = {"files": ["train.bin"], "tokens": n_tokens, "documents": 1, "bytes": 0}
    json.dump({"tokenizer": "sentencepiece", "tokenizer_file": None, "tiktoken_encoding": None, "vocab_size": vocab,
               "dtype": "uint16", "bos_id": 1, "eos_id": 2, "pad_id": None, "source": "random", "splits": {"train": split}},
              open(os.path.join(path, "meta.json"), "w"))
    return path


def bench_train_mfu(batch_size=16, iters=30):
    """MFU of train.py itself on the GPUs of this node: OpenELM-270M at context 2048 on one GPU (target >= 40%
    on an H100), then OpenELM-1.1B with FSDP2 over every local GPU. Prints the last logged MFU of each run."""
    import json
    import os
    import subprocess
    import tempfile
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
    """python bench.py train [throughput|ops|compiled|bpb|mfu]: throughput, bpb and mfu when no part is named (mfu
    only with a GPU); ops times the loss, norm and RoPE alone; compiled times every model eager and under
    torch.compile (a few minutes of compiling)."""
    parts = args or ["throughput", "bpb", "mfu"]
    for part in parts:
        if part not in ("throughput", "ops", "compiled", "bpb", "mfu"):
            raise SystemExit(f"error: unknown part {part!r} of bench.py train: use throughput, ops, compiled, bpb or mfu")
    if "throughput" in parts:
        bench_train_throughput()
    if "ops" in parts:
        bench_train_ops()
    if "compiled" in parts:
        bench_train_throughput(compile=True)
    if "bpb" in parts:
        bench_train_bpb()
    if "mfu" in parts:
        bench_train_mfu()


# ----------------------------------------------------------------------------- finetune (CPU): instruction tuning

def stdlib_functions(path, max_chars=600):
    """An instruction dataset built offline from this Python's standard library: for each top-level function with
    a docstring, the user asks for it by signature and the docstring's first line; the reply is its source.
    Written as messages JSONL; returns the number of conversations."""
    import ast
    import json
    import prepare
    n = 0
    with open(path, "w") as f:
        for file in prepare.source_files("stdlib")[1]:
            try:
                src = open(file, encoding="utf-8").read()
                tree = ast.parse(src)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in tree.body:
                doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
                code = ast.get_source_segment(src, node) if doc else None
                if code and len(code) <= max_chars and doc.strip():
                    ask = f"Write a Python function {node.name}({ast.unparse(node.args)}): {doc.strip().splitlines()[0]}"
                    f.write(json.dumps({"messages": [{"role": "user", "content": ask},
                                                     {"role": "assistant", "content": code}]}) + "\n")
                    n += 1
    return n


@torch.no_grad()
def reply_loss(model, data_dir, split="val", B=16):
    """Mean loss per reply token (the assistant's tokens only, as training counts them) over a chat split."""
    import prepare
    from model import IGNORE_INDEX
    tokens, mask = prepare.open_rows(data_dir, split)
    total, count = 0.0, 0
    for i in range(0, len(tokens), B):
        x = torch.from_numpy(tokens[i:i + B].astype("int64"))
        y = torch.where(torch.from_numpy(mask[i:i + B, 1:].astype(bool)), x[:, 1:], IGNORE_INDEX)  # as train.py
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model.eval()(x[:, :-1], y)
        n = int((y != IGNORE_INDEX).sum())
        total, count = total + loss.item() * n, count + n
    return total / count


def bench_finetune(args, run_dir="out/elm_tiny", steps=150):
    """Instruction tuning on the CPU: elm_tiny (from `make demo`) tuned to answer "write the function f(...)" with its
    stdlib source, fully and with LoRA, the same steps and batches; loss per reply token on held-out functions."""
    import copy
    import importlib
    import os
    import shutil
    import time
    import checkpoint
    import lora
    import prepare
    import train
    if checkpoint.resolve(run_dir) is None:
        raise SystemExit(f"error: bench.py finetune tunes {run_dir}: train it first (make demo)")
    os.makedirs("data", exist_ok=True)
    n = stdlib_functions("data/stdlib_functions.jsonl")
    data = "data/stdlib_chat"
    prepare.prepare_data(data, source="data/stdlib_functions.jsonl", chat_format="messages",
                         tokenizer=os.path.join(checkpoint.resolve(run_dir), "tokenizer.model"), seq_len=256,
                         overlong="drop", val_fraction=0.05, test_fraction=0.0, num_proc=1)
    meta = prepare.read_meta(data)
    print(f"{n} stdlib functions -> {meta['splits']['train']['rows']} train / {meta['splits']['val']['rows']} val "
          f"conversations (dropped {meta['splits']['train']['dropped']} longer than 256 tokens)")
    base, tok = checkpoint.load_model(run_dir)
    rows = [("elm_tiny, not tuned", 0, 0.0, reply_loss(base, data))]
    common = dict(data_dir=data, init_from=run_dir, max_iters=steps, lr_decay_iters=steps, batch_size=16,
                  global_batch_size=16, warmup_iters=10, warmup_init_lr=0.0, weight_decay=0.0, lr_schedule="linear",
                  min_lr=0.0, eval_interval=0, save_interval=0, log_interval=25, dtype="bfloat16")
    runs = {"full finetuning": dict(learning_rate=3e-4),
            "LoRA r=16 (alpha 32)": dict(learning_rate=2e-3, lora_rank=16, lora_alpha=32.0, lora_dropout=0.05)}
    for name, kw in runs.items():
        out = "out/bench_finetune_" + ("lora" if "lora_rank" in kw else "full")
        shutil.rmtree(out, ignore_errors=True)
        importlib.reload(train)  # fresh settings: they are module globals
        t = time.time()
        train.main([f"--{k}={v!r}" if not isinstance(v, str) else f"--{k}={v}" for k, v in {**common, **kw, "out_dir": out}.items()])
        minutes = (time.time() - t) / 60
        model, _ = checkpoint.load_model(out)  # LoRA: base + adapters, merged
        counted = lora.add(copy.deepcopy(base), kw["lora_rank"], 1.0) if "lora_rank" in kw else base
        trainable = sum(p.numel() for p in counted.parameters() if p.requires_grad)
        rows.append((name, trainable, minutes, reply_loss(model, data)))
    print(f"\ninstruction tuning of {run_dir} on stdlib functions, CPU ({torch.get_num_threads()} threads), "
          f"{steps} steps of 16 x 256, bf16 autocast")
    print("| model | trainable params | minutes | loss per reply token (held out) |\n|---|---|---|---|")
    for name, p, m, loss in rows:
        print(f"| {name} | {p / 1e6:.2f}M | {m:.1f} | {loss:.3f} |")


SECTIONS = {"kernels": bench_kernels, "decode": bench_sample, "train": bench_train, "finetune": bench_finetune}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SECTIONS:
        print(f"usage: python bench.py {{{'|'.join(SECTIONS)}}} [--quick]")
        sys.exit(1)
    SECTIONS[sys.argv[1]](sys.argv[2:])
