"""
Weight-only int8 for decoding: every linear layer's weight stored as int8 with one scale per output channel
(w ~ scale[o] * q[o, i], q = round(w / scale) with scale = max|w[o]| / 127), activations left as they are. Batch-1
decoding reads every weight once per token, so a quarter of the bytes of fp32 is most of the speed; the matmul is
PyTorch's _weight_int8pack_mm (the kernel gpt-fast's int8 path uses), which reads the int8 weight directly.

    quantize.int8(model)     the model's nn.Linear layers (and the output head) replaced, in place; returns it

Embeddings stay as they are (a lookup reads one row), and so does a tied output head (it is the embedding).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Int8Linear(nn.Module):
    """y = x @ (scale * q)^T without materialising the float weight."""

    def __init__(self, weight):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x):
        shape = x.shape
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return F.linear(x, self.q.to(x.dtype)) * self.scale.to(x.dtype)  # the same product, dequantised
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.q, self.scale.to(x.dtype))
        return y.view(*shape[:-1], self.out_features)


@torch.no_grad()
def int8(model):
    """Replace every nn.Linear of model (a Transformer) by an Int8Linear of its weight, in place."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child.weight))
    return model
