"""
Kernel timings, beside the kernels (as the Triton tutorials keep theirs): each op of kernels/ against the paths it
replaces, through the switch in kernels/__init__.py. End-to-end comparisons (training, decoding, finetuning)
against other implementations are in the top-level bench.py.

    python -m kernels.bench             GPU: Triton attention / decode / RMSNorm / RoPE vs SDPA's backends and eager
    python -m kernels.bench --quick     the same on fewer shapes
    python -m kernels.bench ops         CPU: the loss, RMSNorm and RoPE forward + backward vs autograd through the
                                        eager code and nanoGPT's ops (F.cross_entropy, F.layer_norm)

FLOPs of attention: forward 4 * B * Hq * Tq * Tk * D, halved when causal, backward 2.5 x forward (FlashAttention-2's
convention), GQA counted by query heads. Numbers are printed, never asserted.
"""
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
    # B * T = 16k tokens, as FlashAttention-2's benchmarks; OpenELM: head_dim 64 with 4 query heads per kv head,
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
    """One new token per sequence against a long KV cache (Llama-2-70B's heads: 32 q / 8 kv heads, d128)."""
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



# ----------------------------------------------------------------------------- CPU ops

def interleaved_seconds(steps, rounds=5, n=3):
    """Fastest seconds per step of each closure, run in turns so a busy shared CPU slows all of them alike."""
    best = {name: float("inf") for name in steps}
    for name, s in steps.items():
        s()  # warm-up (allocator, first-call overheads)
    for _ in range(rounds):
        for name, s in steps.items():
            best[name] = min(best[name], sorted(s() for _ in range(n))[n // 2])
    return best



def bench_ops(B=8, T=256, V=8192):
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
        ("loss with z-loss, 2048x8192 bf16 logits", "ours: kernels.CrossEntropy"): timed(lambda x: CrossEntropy.apply(x, targets, 1e-4), logits),
        ("loss with z-loss, 2048x8192 bf16 logits", "F.cross_entropy + logsumexp"): timed(z, logits),
        ("loss without z-loss", "ours: kernels.CrossEntropy"): timed(lambda x: CrossEntropy.apply(x, targets, 0.0), logits),
        ("loss without z-loss", "nanoGPT: F.cross_entropy"): timed(lambda x: F.cross_entropy(x.float(), targets), logits),
        ("residual RMSNorm, 8x256x384 fp32", "ours: kernels.RMSNormTorch"): timed(lambda x: kernels.RMSNormTorch.apply(x, w, 1e-6), resid),
        ("residual RMSNorm, 8x256x384 fp32", "autograd through kernels.rms_norm_eager"): timed(lambda x: kernels.rms_norm_eager(x, w, 1e-6), resid),
        ("residual RMSNorm, 8x256x384 fp32", "nanoGPT: F.layer_norm"): timed(lambda x: F.layer_norm(x, (384,), w), resid),
        ("QK-norm, 8x256x8x64 bf16 slice", "ours: kernels.RMSNormTorch"): timed(lambda x: kernels.RMSNormTorch.apply(x, qw, 1e-6), q),
        ("QK-norm, 8x256x8x64 bf16 slice", "autograd through kernels.rms_norm_eager"): timed(lambda x: kernels.rms_norm_eager(x, qw, 1e-6), q),
        ("RoPE, 8x256x8x64 fp32", "ours: kernels.RoPETorch"): timed(lambda x: kernels.RoPETorch.apply(x, cos, sin), rq),
        ("RoPE, 8x256x8x64 fp32", "autograd through kernels.rope_eager"): timed(lambda x: kernels.rope_eager(x, cos, sin), rq),
    }
    secs = interleaved_seconds(cases)
    print(f"\nforward + backward on this CPU ({torch.get_num_threads()} threads), fastest median of 3 over 5 rounds")
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
