"""
Kernel timings and errors, beside the kernels (as the Triton tutorials keep theirs): each op of kernels/ against
the paths it replaces, through the switch in kernels/__init__.py. Each measurement returns rows (dicts) that the
command line prints and `python bench.py gpu` puts in its report. End-to-end comparisons (training, decoding,
finetuning) against other implementations are in the top-level bench.py.

    python -m kernels.bench             GPU: Triton attention / decode / RMSNorm / RoPE vs SDPA's backends and eager
    python -m kernels.bench --quick     the same on fewer shapes
    python -m kernels.bench ops         CPU: the loss, RMSNorm, RoPE and bf16 attention forward + backward vs autograd
                                        through the eager code and nanoGPT's ops (F.cross_entropy, F.layer_norm, SDPA)

FLOPs of attention: forward 4 * B * Hq * Tq * Tk * D, halved when causal, backward 2.5 x forward (FlashAttention-2's
convention), GQA counted by query heads. Numbers are printed, never asserted. On a CPU (the interpreter) the same
code runs on tiny shapes, for the code path, not the numbers.
"""
import itertools
import statistics
import sys
import time

import torch

import kernels
from kernels.reference import rel_err

# ----------------------------------------------------------------------------- helpers


def time_ms(fn, grad_to_none=None):
    """Median milliseconds of fn(): triton's do_bench on a GPU (warm-up, L2 flush, CUDA events); elsewhere the
    median of three timed calls after one."""
    if torch.cuda.is_available():
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[1] * 1e3


def attempt(fn):
    """Runs a timing; a backend that cannot take the shape or runs out of memory gives None."""
    try:
        return fn()
    except (RuntimeError, ValueError, NotImplementedError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if "out of memory" in str(e).lower():
            torch.cuda.empty_cache()
        return None


def copy_gbps(device):
    """The practical bandwidth roofline: GB/s a large device-to-device copy moves (reads + writes)."""
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MB: beyond any last-level cache
    y = torch.empty_like(x)
    return 2 * x.numel() / (time_ms(lambda: y.copy_(x)) * 1e-3) / 1e9


def table(rows, cols, title):
    """rows as a markdown table (the keys in cols; None as -)."""
    fmt = lambda v: "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join([f"\n{title}", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def _sdpa_backends():
    """(name, context manager factory) for each SDPA backend this torch build has (GPU only)."""
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


def _rand(*shape, dtype, device, grad=False, gen=None):
    return torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_(grad)


# ----------------------------------------------------------------------------- speed

def attention_speed(shapes, seqlens, dtype, device, tokens=16384, deadline=float("inf")):
    """TFLOP/s of attention forward and backward: Triton against each SDPA backend and eager, B * T = tokens.
    shapes: [(name, Hq, Hkv, D)]. ratio = Triton / the best SDPA backend."""
    backends = _sdpa_backends() if device == "cuda" else [("math", lambda: torch.nn.attention.sdpa_kernel(
        torch.nn.attention.SDPBackend.MATH))]
    rows = []
    for name, Hq, Hkv, D in shapes:
        for T in seqlens:
            if time.time() > deadline:
                return rows
            B = max(1, tokens // T)
            q = _rand(B, Hq, T, D, dtype=dtype, device=device, grad=True)
            k = _rand(B, Hkv, T, D, dtype=dtype, device=device, grad=True)
            v = _rand(B, Hkv, T, D, dtype=dtype, device=device, grad=True)
            do = _rand(B, Hq, T, D, dtype=dtype, device=device)
            for causal in (True, False):
                flops = 4 * B * Hq * T * T * D / (2 if causal else 1)
                fns = {"triton": lambda: kernels.attention(q, k, v, causal, backend="triton")}
                fns.update({f"sdpa-{n}": _sdpa_fn(ctx, q, k, v, causal) for n, ctx in backends})
                # eager materializes (B, Hq, T, T) fp32 scores several times over: skipped where that would not fit
                free = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 2**31
                if B * Hq * T * T * 4 * 4 < 0.5 * free:
                    fns["eager"] = lambda: kernels.attention(q, k, v, causal, backend="eager")
                for pas in ("fwd", "bwd"):
                    row = {"shape": name, "T": T, "mask": "causal" if causal else "full", "pass": pas}
                    for col, fn in fns.items():
                        if pas == "fwd":
                            with torch.no_grad():
                                ms = attempt(lambda: time_ms(fn))
                        else:
                            out = attempt(fn)
                            ms = None if out is None else attempt(lambda: time_ms(
                                lambda: out.backward(do, retain_graph=True), grad_to_none=[q, k, v]))
                            del out
                        row[col] = None if ms is None else flops * (1 if pas == "fwd" else 2.5) / (ms * 1e-3) / 1e12
                    sdpa = [t for c, t in row.items() if c.startswith("sdpa-") and t is not None]
                    row["ratio"] = row["triton"] / max(sdpa) if sdpa and row["triton"] else None
                    rows.append(row)
            del q, k, v, do
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def decode_speed(lengths, batches, dtype, device, heads=(32, 8, 128), deadline=float("inf")):
    """One new token per sequence against a long KV cache (Llama-2-70B's heads: 32 q / 8 kv heads, d128):
    microseconds and GB/s of KV cache read, Triton's split-KV decode against SDPA; ratio > 1: Triton faster."""
    Hq, Hkv, D = heads
    rows = []
    for B in batches:
        for Tk in lengths:
            if time.time() > deadline:
                return rows
            q, k, v = (_rand(B, h, t, D, dtype=dtype, device=device) for h, t in ((Hq, 1), (Hkv, Tk), (Hkv, Tk)))
            kv_bytes = 2 * k.numel() * k.element_size()
            with torch.no_grad():
                tri = attempt(lambda: time_ms(lambda: kernels.attention(q, k, v, backend="triton")))
                ref = attempt(lambda: time_ms(lambda: kernels.attention(q, k, v, backend="sdpa")))
            gbps = [None if t is None else kv_bytes / (t * 1e-3) / 1e9 for t in (tri, ref)]
            rows.append({"B": B, "Tk": Tk, "triton us": tri and tri * 1e3, "sdpa us": ref and ref * 1e3,
                         "triton GB/s": gbps[0], "sdpa GB/s": gbps[1], "ratio": ref / tri if tri and ref else None})
    return rows


def norm_speed(shapes, dtype, device, roofline, deadline=float("inf")):
    """RMSNorm forward and backward GB/s, Triton against eager, and Triton's share of the copy roofline.
    shapes: [(rows, D)], the model norms' widths and QK-norm's head_dim."""
    rows = []
    for N, D in shapes:
        if time.time() > deadline:
            return rows
        x, w = _rand(N, D, dtype=dtype, device=device, grad=True), torch.ones(D, device=device, dtype=dtype, requires_grad=True)
        dy, nbytes = torch.randn_like(x), x.numel() * x.element_size()
        for pas, traffic in (("fwd", 2 * nbytes), ("bwd", 3 * nbytes)):  # x in, y out / x, dy in, dx out
            row = {"rows x D": f"{N}x{D}", "pass": pas}
            for backend in ("triton", "eager"):
                if pas == "fwd":
                    with torch.no_grad():
                        ms = time_ms(lambda: kernels.rms_norm(x, w, 1e-6, backend=backend))
                else:
                    y = kernels.rms_norm(x, w, 1e-6, backend=backend)
                    ms = time_ms(lambda: y.backward(dy, retain_graph=True), grad_to_none=[x, w])
                row[backend] = traffic / (ms * 1e-3) / 1e9
            row.update({"% roofline": 100 * row["triton"] / roofline, "speedup": row["triton"] / row["eager"]})
            rows.append(row)
    return rows


def rope_speed(shapes, dtype, device, roofline, deadline=float("inf")):
    """RoPE on q and k, forward and backward GB/s, Triton against eager. shapes: [(name, B, T, Hq, Hkv, D)]."""
    rows = []
    for name, B, T, Hq, Hkv, D in shapes:
        if time.time() > deadline:
            return rows
        q, k = _rand(B, T, Hq, D, dtype=dtype, device=device, grad=True), _rand(B, T, Hkv, D, dtype=dtype, device=device, grad=True)
        angle = torch.arange(T, device=device)[None, :, None] * torch.rand(D // 2, device=device)
        cos, sin = angle.cos(), angle.sin()
        traffic = 2 * (q.numel() + k.numel()) * q.element_size()  # read and write q and k
        for pas in ("fwd", "bwd"):
            row = {"shape": name, "pass": pas}
            for backend in ("triton", "eager"):
                if pas == "fwd":
                    with torch.no_grad():
                        ms = time_ms(lambda: kernels.apply_rope(q, k, cos, sin, backend=backend))
                else:
                    out = kernels.apply_rope(q, k, cos, sin, backend=backend)
                    grads = [torch.randn_like(t) for t in out]
                    ms = time_ms(lambda: torch.autograd.backward(out, grads, retain_graph=True), grad_to_none=[q, k])
                row[backend] = traffic / (ms * 1e-3) / 1e9
            row.update({"% roofline": 100 * row["triton"] / roofline, "speedup": row["triton"] / row["eager"]})
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- errors

def attention_errors(cases, dtype, device, deadline=float("inf")):
    """Triton's attention error against a float64 reference on the same (rounded) inputs, beside SDPA's own
    error on them: the output and the three input gradients, each as max |x - ref| / max(1, max |ref|), the
    largest reported. A Tq == 1 case without gradients takes the split-KV decode path. Triton passes when its
    error is within 2x SDPA's. cases: [(name, B, Hq, Hkv, Tq, Tk, D, causal)]."""
    rows, gen = [], torch.Generator(device=device).manual_seed(0)
    for name, B, Hq, Hkv, Tq, Tk, D, causal in cases:
        if time.time() > deadline:
            return rows
        ins = [_rand(B, h, t, D, dtype=dtype, device=device, gen=gen) for h, t in ((Hq, Tq), (Hkv, Tk), (Hkv, Tk))]
        do = _rand(B, Hq, Tq, D, dtype=dtype, device=device, gen=gen)
        grads = Tq > 1

        def run(backend, cast):
            leaves = [cast(t).requires_grad_(grads) for t in ins]
            with torch.set_grad_enabled(grads):
                out = kernels.attention(*leaves, causal=causal, backend=backend)
            return [out, *torch.autograd.grad(out, leaves, cast(do))] if grads else [out]

        ref = run("eager", lambda t: t.double())
        errs = {b: max(rel_err(g, r) for g, r in zip(run(b, lambda t: t.clone()), ref)) for b in ("triton", "sdpa")}
        rows.append({"case": name, "dtype": str(dtype)[6:], "Tq": Tq, "Tk": Tk, "causal": causal,
                     "path": "decode" if not grads else "fwd+bwd", "triton err": errs["triton"],
                     "sdpa err": errs["sdpa"], "ok": errs["triton"] <= 2 * errs["sdpa"] + 1e-6})
        del ins, ref
    return rows


def norm_rope_errors(widths, head_dims, dtype, device):
    """RMSNorm (the model norm's widths, and QK-norm over head_dim on a strided slice of a fused projection) and
    RoPE: Triton's error against float64 beside the eager path's (rms_norm_eager / rope_eager in dtype)."""
    rows, gen = [], torch.Generator(device=device).manual_seed(1)
    for kind, D in [("norm", w) for w in widths] + [("qk-norm", d) for d in head_dims] + [("rope", d) for d in head_dims]:
        if kind == "rope":
            q, k = _rand(2, 64, 8, D, dtype=dtype, device=device, gen=gen), _rand(2, 64, 2, D, dtype=dtype, device=device, gen=gen)
            angle = 100 * torch.rand(1, 64, D // 2, generator=gen, device=device)
            cos, sin = angle.cos(), angle.sin()
            ref = kernels.apply_rope(q.double(), k.double(), cos.double(), sin.double(), backend="eager")
            got = {b: kernels.apply_rope(q, k, cos, sin, backend=b) for b in ("triton", "eager")}
        else:
            x = _rand(2, 64, 12 if kind == "qk-norm" else 1, D, dtype=dtype, device=device, gen=gen)[:, :, :8]
            w = 1 + 0.3 * torch.randn(D, generator=gen, device=device)
            ref = [kernels.rms_norm(x.double(), w.double(), 1e-6, backend="eager")]
            got = {b: [kernels.rms_norm(x, w.to(dtype), 1e-6, backend=b)] for b in ("triton", "eager")}
        errs = {b: max(rel_err(g, r) for g, r in zip(got[b], ref)) for b in got}
        rows.append({"op": kind, "D": D, "dtype": str(dtype)[6:], "triton err": errs["triton"],
                     "eager err": errs["eager"], "ok": errs["triton"] <= 2 * errs["eager"] + 1e-6})
    return rows


# ----------------------------------------------------------------------------- the GPU tables

def bench_kernels(args):
    quick = "--quick" in args
    if not torch.cuda.is_available():
        print("python -m kernels.bench: needs a CUDA GPU (none found here); nothing was timed")
        return
    import triton
    props, bf16 = torch.cuda.get_device_properties(0), torch.bfloat16
    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}{', quick' if quick else ''}")
    roofline = copy_gbps("cuda")
    # B * T = 16k tokens, as FlashAttention-2's benchmarks; OpenELM: head_dim 64 with 4 query heads per kv head,
    # LLaMA-7B: 32 heads of 128
    shapes = [("openelm d64 gqa4", 32, 8, 64), ("llama7b d128", 32, 32, 128)]
    seqlens = [1024, 4096] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    backends = ["triton"] + [f"sdpa-{n}" for n, _ in _sdpa_backends()] + ["eager"]
    print(table(attention_speed(shapes, seqlens, bf16, "cuda"), ["shape", "T", "mask", "pass", *backends, "ratio"],
                "attention, bf16, TFLOP/s (ratio = triton / best SDPA)"))
    print(table(decode_speed([4096, 65536] if quick else [4096, 8192, 16384, 32768, 65536], (1, 8), bf16, "cuda"),
                ["B", "Tk", "triton us", "sdpa us", "triton GB/s", "sdpa GB/s", "ratio"],
                "decode (Tq = 1), bf16, Hq 32 / Hkv 8, d128"))
    # model norms of OpenELM-270M (1280), OpenLLaMA-3B (3200), LLaMA-7B (4096); QK-norm over head_dim 64
    norms = [(16384, 4096), (16384 * 16, 64)] if quick else [(16384, 1280), (16384, 3200), (16384, 4096), (16384 * 16, 64)]
    cols = ["triton", "eager", "% roofline", "speedup"]
    print(table(norm_speed(norms, bf16, "cuda", roofline), ["rows x D", "pass", *cols],
                f"RMSNorm, bf16, GB/s (copy roofline {roofline:.0f} GB/s)"))
    ropes = [("openelm", 8, 2048, 16, 4, 64), ("llama7b", 4, 2048, 32, 32, 128)]
    print(table(rope_speed(ropes[:1] if quick else ropes, bf16, "cuda", roofline), ["shape", "pass", *cols],
                f"RoPE (q and k), bf16, GB/s (copy roofline {roofline:.0f} GB/s)"))


# ----------------------------------------------------------------------------- CPU ops

def interleaved_seconds(steps, rounds=7, n=3, per_round=False):
    """Seconds per step of each closure: the median over rounds, taken in turns so that a busy shared CPU slows
    all of them alike, of each round's median of n steps (per_round: each round's, in order)."""
    times = {name: [] for name in steps}
    for name, s in steps.items():
        s()  # warm-up (allocator, first-call overheads)
    for _ in range(rounds):
        for name, s in steps.items():
            times[name].append(statistics.median(s() for _ in range(n)))
    return times if per_round else {name: statistics.median(t) for name, t in times.items()}


def bench_ops(B=8, T=256, V=8192):
    """Forward + backward of the elementwise ops that separate elm_tiny from the GPT, at its shapes on this CPU:
    our autograd Functions (what the model runs) against autograd through the eager reference and against what
    nanoGPT runs in their place (F.cross_entropy, F.layer_norm)."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(B * T, V, generator=g).bfloat16(), torch.randint(V, (B * T,), generator=g)
    resid, w = torch.randn(B, T, 384, generator=g), torch.ones(384, requires_grad=True)
    q, qw = torch.randn(B, T, 12, 64, generator=g).bfloat16()[:, :, :8], torch.ones(64, requires_grad=True)  # q of qkv
    rq, angle = torch.randn(B, T, 8, 64, generator=g), torch.randn(1, T, 32, generator=g)
    cos, sin = angle.cos(), angle.sin()
    gate_up = torch.randn(B, T, 2 * 1536, generator=g)  # elm_tiny's widest FFN

    def timed(fn, x):
        def step():
            leaf = x.detach().requires_grad_()
            t = time.perf_counter()
            out = fn(leaf)
            out.backward(torch.ones_like(out) if out.dim() else None)
            return time.perf_counter() - t
        return step

    ce = lambda z_loss: lambda x: kernels.cross_entropy(x, targets, z_loss, backend="sdpa")  # noqa: E731
    z = lambda x: F.cross_entropy(x.float(), targets) + 1e-4 * torch.logsumexp(x.float(), -1).pow(2).mean()  # noqa: E731
    cases = {
        ("loss with z-loss, 2048x8192 bf16 logits", "ours: kernels.cross_entropy"): timed(ce(1e-4), logits),
        ("loss with z-loss, 2048x8192 bf16 logits", "F.cross_entropy + logsumexp"): timed(z, logits),
        ("loss without z-loss", "ours: kernels.cross_entropy"): timed(ce(0.0), logits),
        ("loss without z-loss", "nanoGPT: F.cross_entropy"): timed(lambda x: F.cross_entropy(x.float(), targets), logits),
        ("residual RMSNorm, 8x256x384 fp32", "ours: kernels.RMSNormTorch"): timed(lambda x: kernels.RMSNormTorch.apply(x, w, 1e-6), resid),
        ("residual RMSNorm, 8x256x384 fp32", "autograd through kernels.rms_norm_eager"): timed(lambda x: kernels.rms_norm_eager(x, w, 1e-6), resid),
        ("residual RMSNorm, 8x256x384 fp32", "nanoGPT: F.layer_norm"): timed(lambda x: F.layer_norm(x, (384,), w), resid),
        ("QK-norm, 8x256x8x64 bf16 slice", "ours: kernels.RMSNormTorch"): timed(lambda x: kernels.RMSNormTorch.apply(x, qw, 1e-6), q),
        ("QK-norm, 8x256x8x64 bf16 slice", "autograd through kernels.rms_norm_eager"): timed(lambda x: kernels.rms_norm_eager(x, qw, 1e-6), q),
        ("RoPE, 8x256x8x64 fp32", "ours: kernels.RoPETorch"): timed(lambda x: kernels.RoPETorch.apply(x, cos, sin), rq),
        ("RoPE, 8x256x8x64 fp32", "autograd through kernels.rope_eager"): timed(lambda x: kernels.rope_eager(x, cos, sin), rq),
        ("SwiGLU, 8x256x(2x1536) fp32", "ours: kernels.SwiGLUTorch"): timed(kernels.SwiGLUTorch.apply, gate_up),
        ("SwiGLU, 8x256x(2x1536) fp32", "autograd through kernels.swiglu_eager"): timed(kernels.swiglu_eager, gate_up),
    }
    for dtype, T in itertools.product((torch.bfloat16, torch.float32), (128, 256, 512, 1024, 2048)):
        qkv = torch.randn(2048 // T, T, 12, 64, generator=g).to(dtype)  # the model's q, k, v: views of one projection
        heads = lambda fn: lambda x: fn(*(t.transpose(1, 2) for t in x.split([8, 2, 2], 2)), True)  # noqa: E731
        op = f"causal attention, {2048 // T}x{T} tokens, 8/2 heads of 64, {str(dtype)[6:]}"
        cases[(op, "ours: kernels.attention_math")] = timed(heads(kernels.attention_math), qkv)
        cases[(op, "SDPA (nanoGPT, transformers)")] = timed(heads(kernels.attention_sdpa), qkv)
    secs = interleaved_seconds(cases)
    print(f"\nforward + backward on this CPU ({torch.get_num_threads()} threads), "
          f"median over 7 rounds of the median of 3")
    print("| op | implementation | ms |\n|---|---|---|")
    for (op, impl), sec in secs.items():
        print(f"| {op} | {impl} | {sec * 1e3:.2f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["ops"]:
        bench_ops()
    elif all(a == "--quick" for a in sys.argv[1:]):
        bench_kernels(sys.argv[1:])
    else:
        print("usage: python -m kernels.bench [--quick] | python -m kernels.bench ops")
        sys.exit(1)
