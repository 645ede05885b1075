"""
Compiles every Triton kernel of this package for an NVIDIA GPU without one: each launcher runs on CPU
tensors against a stand-in driver that names the target, and each kernel is compiled to a cubin instead
of launched, with the argument types, alignments and constexprs the launcher passes and every
autotuning config. This checks what the CPU interpreter cannot: that the kernels lower for the real
target (bf16/fp16 tl.dot included), and that some config of each fits the shared memory. Registers and
spills (stack bytes) come from the cubin, via the cuobjdump that ships with triton.

    python -m kernels.compile_check                 sm_90 (H100, H200): bf16 and fp16, every config
    python -m kernels.compile_check --arch=80       sm_80 (A100); also 86, 89
    python -m kernels.compile_check --quick         bf16, head_dim 64 and 128, each kernel's first config

Exits non-zero if a kernel fails to compile or no config of an autotuned kernel fits.
"""
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("error: kernels.compile_check compiles real GPU code: unset TRITON_INTERPRET")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, stated (it warns when unset)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from kernels import common, flash_attention as fa  # noqa: E402
from kernels import rmsnorm, rope  # noqa: E402

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}  # per block, opt-in maximum


class _Target:
    """The part of triton's driver interface that compiling (not launching) touches."""

    def __init__(self, arch):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def _resources(cubin):
    """(registers, stack bytes) per thread from cuobjdump -res-usage."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    fields = dict(kv.split(":") for line in out.splitlines() if "REG:" in line for kv in line.split())
    return int(fields["REG"]), int(fields["STACK"])


def run(arch=90, quick=False):
    driver.set_active(_Target(arch))
    common.num_sms = lambda device_index: 132  # an H100's
    results = []  # (kernel, case, config, shared bytes, registers, stack bytes) or an error string
    case = {}

    def compile_only(self, *args, grid, warmup, **kw):
        name = f"{self.module.rsplit('.', 1)[-1]}.{self.__name__}"  # rmsnorm and flash_attention both have _fwd_kernel
        config = f"{kw.get('BLOCK_M', '')}x{kw.get('BLOCK_N', '')} w{kw.get('num_warps', 4)} s{kw.get('num_stages', '-')}"
        try:
            k = original(self, *args, grid=grid, warmup=True, **kw)
            results.append((name, case["name"], config, k.metadata.shared, *_resources(k.asm["cubin"])))
        except Exception as e:  # noqa: BLE001  (every failure is reported, the sweep goes on)
            lines = [line.strip() for line in str(e).splitlines() if any(c.isalpha() for c in line)] or [""]
            results.append((name, case["name"], config, f"{type(e).__name__}: {lines[0]} {lines[-1]}"))

    class Configs:  # stands in for triton.autotune: compiles the kernel once per config
        def __init__(self, kind, block_d):
            self.fn = {"fwd": fa._fwd_kernel, "dq": fa._bwd_dq_kernel, "dkdv": fa._bwd_dkdv_kernel}[kind]
            self.configs = fa._configs(kind, block_d)[:1 if quick else None]

        def __getitem__(self, grid):
            def launch(*args, **kw):
                for c in self.configs:
                    self.fn[grid](*args, **kw, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            return launch

    original = JITFunction.run
    JITFunction.run = compile_only
    fa._kernel = Configs
    try:
        dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16]
        for dtype in dtypes:
            for D in ([64, 128] if quick else [64, 100, 128, 256]):
                for causal in ([True] if quick else [True, False]):
                    case["name"] = f"{str(dtype)[6:]} D={D} {'causal' if causal else 'full'}"
                    B, Hq, Hkv, T = 1, 8, 2, 256  # GQA 4, as OpenELM
                    q, k, v = (torch.empty(B, h, T, D, dtype=dtype) for h in (Hq, Hkv, Hkv))
                    o, lse = fa._forward(q, k, v, causal)
                    fa._backward(q, k, v, o, lse, torch.empty_like(o), causal)
                case["name"] = f"{str(dtype)[6:]} D={D} decode"
                fa._decode(q[:, :, :1], k, v, num_splits=None)
            for D in (64, 2048, 16384):  # QK-norm, a model width, a row wider than MAX_BLOCK (chunked)
                case["name"] = f"{str(dtype)[6:]} D={D}"
                x, w = torch.empty(512, D, dtype=dtype), torch.empty(D, dtype=torch.float32)
                y, rstd = rmsnorm._forward(x, w, 1e-6, rmsnorm.MAX_BLOCK)
                rmsnorm._backward(x, w, rstd, torch.empty_like(x), rmsnorm.MAX_BLOCK)
            for D in (64, 100, 128):
                case["name"] = f"{str(dtype)[6:]} D={D}"
                q, k = torch.empty(2, 64, 8, D, dtype=dtype), torch.empty(2, 64, 2, D, dtype=dtype)
                rope._rotate(q, k, torch.empty(1, 64, D // 2), torch.empty(1, 64, D // 2), 1.0)
    finally:
        JITFunction.run = original  # the stand-in driver stays: this is meant for a process of its own
    return results


def report(results, arch):
    limit = SHARED_LIMIT.get(arch, 99 * 1024)
    print(f"| kernel | case | BLOCK_M x BLOCK_N, warps, stages | shared KB | registers | stack bytes |")
    print("|---|---|---|---|---|---|")
    fits, failed, spill_free = defaultdict(bool), [], defaultdict(bool)
    for kernel, case, config, *r in results:
        if isinstance(r[0], str):
            failed.append(f"{kernel} {case} {config}: {r[0]}")
            print(f"| {kernel} | {case} | {config} | failed: {r[0]} | | |")
            continue
        shared, regs, stack = r
        fits[kernel, case] |= shared <= limit
        spill_free[kernel, case] |= shared <= limit and stack == 0
        over = " (over the limit)" if shared > limit else ""
        print(f"| {kernel} | {case} | {config} | {shared / 1024:.0f}{over} | {regs} | {stack} |")
    none_fit = [f"{kernel} {case}" for (kernel, case), ok in fits.items() if not ok]
    for kernel, case in [key for key, ok in spill_free.items() if not ok]:
        print(f"note: every compiled config of {kernel} ({case}) that fits spills registers to the stack")
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    for line in none_fit:
        print(f"error: no config of {line} fits sm_{arch}'s {limit // 1024} KB of shared memory", file=sys.stderr)
    print(f"{len(results)} compiled variants for sm_{arch}, {len(failed)} failed, {len(none_fit)} without a fitting config")
    return not failed and not none_fit


if __name__ == "__main__":
    args = sys.argv[1:]
    arch = next((a.split("=", 1)[1] for a in args if a.startswith("--arch=")), "90")
    unknown = [a for a in args if a != "--quick" and not a.startswith("--arch=")]
    if unknown:
        raise SystemExit(f"error: unknown argument {unknown[0]!r}: use --arch=90|80 and --quick")
    if not arch.isdigit() or int(arch) not in SHARED_LIMIT:
        raise SystemExit(f"error: --arch={arch} is not one of {', '.join(map(str, SHARED_LIMIT))} (compute capability x 10)")
    arch = int(arch)
    sys.exit(0 if report(run(arch, "--quick" in args), arch) else 1)
