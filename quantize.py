"""
Weight formats for batch-1 decoding, which reads every weight once per token, so its speed is the speed at which
the matmuls stream the weights:

    quantize.int8(model)        weight-only int8, in place: every nn.Linear's weight as int8 with one scale per
                                output channel (w ~ scale[o] * q[o, i], q = round(w / scale), scale = max|w[o]| / 127);
                                a quarter of fp32's bytes (sample.py and eval.py --int8=True)
    with quantize.packed(model):   fp32 weights packed for MKL's sgemm while the block runs (sample.generate on a
                                CPU does this by itself): the same products, read about twice as fast on a CPU

Embeddings stay as they are (a lookup reads one row), and so does a tied output head (it is the embedding).
"""
import contextlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class Int8Linear(nn.Module):
    """y = x @ (scale * q)^T without a float copy of the weight: PyTorch's _weight_int8pack_mm (the kernel of
    gpt-fast's int8 path) on bf16 activations, its fast path on a CPU (fp32 activations take a scalar loop there),
    the result cast back."""

    def __init__(self, weight):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x):
        lead = x.shape[:-1]
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16), self.q, self.scale)
        return y.view(*lead, self.out_features).to(x.dtype)


@torch.no_grad()
def int8(model):
    """Replace every nn.Linear of model (a Transformer) by an Int8Linear of its weight, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child.weight))
    return model


def _pack(linear):
    """MKL's packed form of an nn.Linear's fp32 weight, made once and kept until the weight changes."""
    w = linear.weight
    key = (w.data_ptr(), w._version)
    if getattr(linear, "_mkl", (None,))[0] != key:
        linear._mkl = (key, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), 1))
    return linear._mkl[1]


def can_pack(model):
    """Whether packing pays and fits: fp32 weights on a CPU with MKL, no gradient wanted, and the packed copies
    (about twice the weights' bytes) within a quarter of this machine's memory."""
    w = model.tok_embeddings.weight
    if w.device.type != "cpu" or w.dtype != torch.float32 or not torch.backends.mkl.is_available():
        return False
    if torch.is_grad_enabled() or not hasattr(torch.ops.mkl, "_mkl_linear"):
        return False
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    size = sum(m.weight.numel() * 4 for m in linears)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): pack only what is surely small
        memory = 4 * 2**30
    return bool(linears) and 2 * size < memory / 4


@contextlib.contextmanager
def packed(model):
    """For the block, every fp32 nn.Linear of model runs MKL's packed sgemm (where can_pack says it pays); the
    modules themselves are left as they were, so training, saving and loading see nothing of it."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)] if can_pack(model) else []
    def forward(m, p):
        def run(x):  # _mkl_linear takes rows: (..., in) -> (rows, in) -> (..., out)
            y = torch.ops.mkl._mkl_linear(x.reshape(-1, m.in_features), p, m.weight, m.bias, 1)
            return y.view(*x.shape[:-1], m.out_features)
        return run
    for m in linears:
        m.forward = forward(m, _pack(m))
    try:
        yield
    finally:
        for m in linears:
            del m.forward
