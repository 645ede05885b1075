"""
Weight formats for batch-1 decoding, which reads every weight once per token, so its speed is the speed at which
the matmuls stream the weights:

    quantize.int8(model)        weight-only int8, in place: every nn.Linear's weight as int8 with one scale per
                                output channel (w ~ scale[o] * q[o, i], q = round(w / scale), scale = max|w[o]| / 127);
                                a quarter of fp32's bytes (sample.py and eval.py --int8=True)
    with quantize.gemv(model):  while the block runs, fp32 linear layers and a tied output head multiply a decode
                                step's few rows as batched matrix-vector products (sample.generate on a CPU does
                                this by itself, compiled or not): the same products, their weights streamed two to
                                four times as fast

int8 leaves the embeddings as they are (a lookup reads one row), and so a tied output head too (it is the embedding).
"""
import contextlib

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


def gemv_pays(model):
    """Whether gemv() helps: fp32 weights on a CPU with MKL (where it was measured) and no gradient wanted."""
    w = model.tok_embeddings.weight
    return (w.device.type == "cpu" and w.dtype == torch.float32 and torch.backends.mkl.is_available()
            and not torch.is_grad_enabled())


def _products(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (rows, in) times w (blocks, out / blocks, in) transposed: (rows, out), as a batch of
    matrix-vector products. The rows as columns, the same for every block: (blocks, in, rows) with strides
    (0, 1, in) for a contiguous x, a view of it; MKL's batched product streams this layout fastest (the same columns copied
    contiguous are 4x slower)."""
    blocks, part, inp = w.shape
    y = torch.bmm(w, x.as_strided((blocks, inp, x.shape[0]), (0, x.stride(1), x.stride(0))))  # (blocks, out / blocks, rows)
    return y.view(1, blocks * part) if x.shape[0] == 1 else y.view(blocks * part, -1).t().contiguous()


# the same products as one opaque operator for torch.compile (sample.py's compile=True): inductor calls it as it
# is, where tracing through it gets the batched product's layout rewritten and loses the speed (152 tokens/s
# against 450 for the 14M decode of bench.py); eager code calls _products directly, without the dispatch
_products_op = torch.library.custom_op("nanoelm::gemv", _products, mutates_args=())
_products_op.register_fake(lambda x, w: x.new_empty(x.shape[0], w.shape[0] * w.shape[1]))


def _gemv(weight, max_rows):
    """x -> x @ weight^T, computing at most max_rows rows as a batch of matrix-vector products (see gemv)."""
    out, inp = weight.shape
    # a block or more per thread where the rows divide so: the largest divisor of out up to max(4, threads)
    blocks = next((b for b in range(max(4, torch.get_num_threads()), 1, -1) if out % b == 0), 1)
    w = weight.view(blocks, out // blocks, inp)  # a view, not a copy

    def run(x):
        rows = x.numel() // inp
        if rows > max_rows or blocks == 1 or not x.is_contiguous():  # F.linear does matrix products well
            return F.linear(x, weight)
        products = _products_op if torch.compiler.is_compiling() else _products
        return products(x.view(rows, inp), w).view(*x.shape[:-1], out)
    return run


@contextlib.contextmanager
def gemv(model, max_rows=16):
    """For the block, every bias-free fp32 nn.Linear of model, and a tied output head (where gemv_pays),
    multiplies an input of at most max_rows rows (a decode step's) as a batch of matrix-vector products: its
    weight viewed as (blocks, out / blocks, in) times the rows as columns. F.linear streams an fp32 weight for a
    row or a few at about 10 GB/s on a CPU (MKL's sgemm in the layout nn.Linear keeps); the batched product
    streams it at 20-40 GB/s, its blocks spread over the threads. The same products, summed in another order.
    The modules are left as they were, so training, saving and loading see nothing of it."""
    pays = gemv_pays(model)
    # modules already rebound (a gemv block inside another, or a draft model that is the target) are left to it
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is None
               and "forward" not in m.__dict__] if pays else []
    head = pays and model.config.tie_embeddings and "head" not in model.__dict__
    for m in linears:
        m.forward = _gemv(m.weight, max_rows)
    if head:
        model.head = _gemv(model.tok_embeddings.weight, max_rows)
    try:
        yield
    finally:
        for m in linears:
            del m.forward
        if head:
            del model.head
