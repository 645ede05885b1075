"""
Hugging Face and Meta checkpoints in and out: the one file that knows external formats.

  load_model(path)       a Hugging Face directory (config.json with model_type "openelm" or "llama", weights as
                         safetensors or pytorch_model*.bin, one file or sharded with an index json), or Meta's
                         original consolidated.*.pth + params.json (interleaved RoPE: q/k permuted as transformers'
                         convert_llama_weights_to_hf.py does)
  load_tokenizer(path)   the directory's SentencePiece tokenizer.model (OpenELM ships none: pass Llama-2's)
  save_model(model, path) LLaMA-family models for transformers' LlamaForCausalLM; OpenELM models in the Hub's
                         layout (config.json + transformer.* tensors) that Apple's modeling_openelm.py reads

One explicit name map per format below. Every tensor in the files must be used, every parameter filled, each
with the shape config.json implies; anything else stops with one line naming the file or tensor. The command
line that exports our runs is export.py; checkpoint.load_model reads Hugging Face and Meta directories through
here.
"""
import dataclasses
import glob
import json
import os
import pickle
import re
import shutil
import sys
import time

import torch
import torch.nn as nn

from configurator import InputError, torch_dtype
from files import atomic_write, read_json, write_json
from model import ModelConfig, Transformer, per_layer
from tokenizer import Tokenizer, fits, tokenizer_file

# One name map per format: our parameter -> the external tensors stacked by rows into it ({i}: layer index).
OPENELM = {  # Apple's modeling_openelm.py on the Hub: already fused; proj_1 is [gate | up] (its OpenELMFeedForwardNetwork)
    "tok_embeddings.weight": ["transformer.token_embeddings.weight"],
    "layers.{i}.attn_norm.weight": ["transformer.layers.{i}.attn_norm.weight"],
    "layers.{i}.attn.qkv_proj.weight": ["transformer.layers.{i}.attn.qkv_proj.weight"],
    "layers.{i}.attn.q_norm.weight": ["transformer.layers.{i}.attn.q_norm.weight"],
    "layers.{i}.attn.k_norm.weight": ["transformer.layers.{i}.attn.k_norm.weight"],
    "layers.{i}.attn.out_proj.weight": ["transformer.layers.{i}.attn.out_proj.weight"],
    "layers.{i}.ffn_norm.weight": ["transformer.layers.{i}.ffn_norm.weight"],
    "layers.{i}.ffn.gate_up_proj.weight": ["transformer.layers.{i}.ffn.proj_1.weight"],
    "layers.{i}.ffn.down_proj.weight": ["transformer.layers.{i}.ffn.proj_2.weight"],
    "norm.weight": ["transformer.norm.weight"],
    "lm_head.weight": ["lm_head.weight"],  # only when share_input_output_layers is false
}
LLAMA = {  # transformers' LlamaForCausalLM (modeling_llama.py): rotate-half layout already, never permuted
    "tok_embeddings.weight": ["model.embed_tokens.weight"],
    "layers.{i}.attn_norm.weight": ["model.layers.{i}.input_layernorm.weight"],
    "layers.{i}.attn.qkv_proj.weight": [f"model.layers.{{i}}.self_attn.{x}_proj.weight" for x in "qkv"],
    "layers.{i}.attn.out_proj.weight": ["model.layers.{i}.self_attn.o_proj.weight"],
    "layers.{i}.ffn_norm.weight": ["model.layers.{i}.post_attention_layernorm.weight"],
    "layers.{i}.ffn.gate_up_proj.weight": ["model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"],
    "layers.{i}.ffn.down_proj.weight": ["model.layers.{i}.mlp.down_proj.weight"],
    "norm.weight": ["model.norm.weight"],
    "lm_head.weight": ["lm_head.weight"],
}
META = {  # Meta's consolidated.*.pth, and EasyLM weights saved under Meta's names: wq, wk in interleaved-RoPE order
    "tok_embeddings.weight": ["tok_embeddings.weight"],
    "layers.{i}.attn_norm.weight": ["layers.{i}.attention_norm.weight"],
    "layers.{i}.attn.qkv_proj.weight": [f"layers.{{i}}.attention.w{x}.weight" for x in "qkv"],
    "layers.{i}.attn.out_proj.weight": ["layers.{i}.attention.wo.weight"],
    "layers.{i}.ffn_norm.weight": ["layers.{i}.ffn_norm.weight"],
    "layers.{i}.ffn.gate_up_proj.weight": ["layers.{i}.feed_forward.w1.weight", "layers.{i}.feed_forward.w3.weight"],
    "layers.{i}.ffn.down_proj.weight": ["layers.{i}.feed_forward.w2.weight"],
    "norm.weight": ["norm.weight"],
    "lm_head.weight": ["output.weight"],
}
# Meta's model-parallel shards split column-parallel weights by rows and row-parallel ones (and the embedding) by columns
META_CAT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
IGNORED = re.compile(r"(rotary_emb\.inv_freq|rope\.freqs)$")  # RoPE buffers that old converters saved
# Apple's OpenELMModel builds a `classifier` Linear when share_input_output_layers is false, but its forward uses
# OpenELMForCausalLM.lm_head instead (modeling_openelm.py): checkpoints saved by that code carry both
OPENELM_UNUSED = "transformer.classifier.weight"


def _read_json(path):
    return read_json(path, "download it again", missing="give a Hugging Face model directory (config.json + weights) "
                     "or a Meta one (params.json)")


def _meta_files(path):
    return sorted(glob.glob(os.path.join(path, "consolidated.*.pth")))


def _is_meta(path):
    return os.path.isfile(os.path.join(path, "params.json")) and bool(_meta_files(path))


def is_hf_dir(path):
    """True for a directory load_model reads: Hugging Face (config.json naming a model_type) or Meta (params.json)."""
    if not os.path.isdir(path):
        return False
    if _is_meta(path):
        return True
    try:
        with open(os.path.join(path, "config.json")) as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- configs

def load_config(path):
    """The ModelConfig of a Hugging Face or Meta directory, from its config.json / params.json alone."""
    if _is_meta(path):
        return _meta_config(path)
    cfg, where = _read_json(os.path.join(path, "config.json")), os.path.join(path, "config.json")
    kind = cfg.get("model_type")
    if kind not in ("openelm", "llama"):
        raise InputError(f"{where} has model_type {kind!r}: nanoELM reads 'openelm' (apple/OpenELM-*) and 'llama' "
                         "(Llama, OpenLLaMA) checkpoints")
    try:
        config = _openelm_config(cfg, where) if kind == "openelm" else _llama_config(cfg, where)
    except KeyError as e:
        raise InputError(f"{where} lacks the field {e.args[0]!r} that a {kind} config.json has: download it again")
    except InputError:
        raise
    except (ValueError, TypeError) as e:  # ModelConfig's own checks
        raise InputError(f"{where} describes no model nanoELM can build: {e}")
    if kind == "openelm" and not config.tie_embeddings and cfg.get("tie_word_embeddings", True) and any(
            os.path.isfile(os.path.join(path, f)) for f in ("model.safetensors", "model.safetensors.index.json",
                                                           "pytorch_model.bin", "pytorch_model.bin.index.json")):
        # transformers' tie_word_embeddings defaults to true: Apple's code then ties lm_head to the embedding, and a
        # file saved that way has no lm_head of its own (the weights' names decide; a bare config.json cannot)
        config = dataclasses.replace(config, tie_embeddings="lm_head.weight" not in _tensor_names(_weight_files(path)))
    return config


def _openelm_config(c, where):
    if not c.get("ffn_with_glu", True) or c.get("activation_fn_name", "swish") not in ("swish", "silu"):
        raise InputError(f"{where}: only OpenELM's SwiGLU FFN (ffn_with_glu, swish) is supported")
    if c.get("normalization_layer_name", "rms_norm") != "rms_norm":
        raise InputError(f"{where}: only normalization_layer_name 'rms_norm' is supported")
    pair = lambda m: tuple(m) if isinstance(m, list) and len(m) == 2 else m  # a range (lo, hi) or a per-layer list
    config = ModelConfig(
        vocab_size=c["vocab_size"], block_size=c.get("max_context_length", 2048), n_layer=c["num_transformer_layers"],
        n_embd=c["model_dim"], head_dim=c["head_dim"], num_gqa_groups=c["num_gqa_groups"],
        qkv_multipliers=pair(c["qkv_multipliers"]), ffn_multipliers=pair(c["ffn_multipliers"]),
        ffn_dim_divisor=c["ffn_dim_divisor"], qk_norm=c.get("normalize_qk_projections", True),
        tie_embeddings=c.get("share_input_output_layers", True), rope_theta=float(c.get("rope_freq_constant", 10000)),
        norm_eps=1e-6, init="corenet")  # OpenELM's eps: CoreNet's RMSNorm default; the config has no field
    # per-layer shapes come from the multipliers (ModelConfig.layer_dims); the head lists the Hub stores must agree
    dims = config.layer_dims()
    for key, j in (("num_query_heads", 0), ("num_kv_heads", 1)):
        if isinstance(c.get(key), list) and c[key] != [d[j] for d in dims]:
            raise InputError(f"{where}: {key}={c[key]} disagrees with the heads its multipliers give, "
                             f"{[d[j] for d in dims]}")
    return config


def _llama_config(c, where):
    rope = c.get("rope_parameters") or {}  # transformers 5 nests rope_theta here; 4.x keeps it at the top
    scaling = c.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling:
        raise InputError(f"{where} uses RoPE scaling {scaling}: nanoELM implements plain RoPE only")
    if c.get("hidden_act", "silu") != "silu" or c.get("attention_bias") or c.get("mlp_bias"):
        raise InputError(f"{where}: only SiLU and bias-free projections are supported (hidden_act, attention_bias, "
                         "mlp_bias)")
    n_head = c["num_attention_heads"]
    return ModelConfig(
        vocab_size=c["vocab_size"], block_size=c.get("max_position_embeddings", 2048), n_layer=c["num_hidden_layers"],
        n_embd=c["hidden_size"], n_head=n_head, n_kv_head=c.get("num_key_value_heads") or n_head,
        head_dim=c.get("head_dim") or c["hidden_size"] // n_head, ffn_dim=c["intermediate_size"],
        norm_eps=c["rms_norm_eps"], rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        tie_embeddings=c.get("tie_word_embeddings", False), init="normal", init_std=c.get("initializer_range", 0.02))


def _meta_config(path):
    p = _read_json(os.path.join(path, "params.json"))
    files = _meta_files(path)
    # vocab_size is -1 in LLaMA-1's params.json and the FFN width follows a rounding rule OpenLLaMA-3B breaks
    # (Meta's llama/model.py FeedForward; OpenLLaMA-3B's 8640 is 8704 by it), so both are read from shard 0's tensors (memory-mapped: nothing else is read)
    sd = _torch_load(files[0])
    try:
        vocab = sd["tok_embeddings.weight"].shape[0]
        ffn = sd["layers.0.feed_forward.w1.weight"].shape[0] * len(files)
    except KeyError as e:
        raise InputError(f"{files[0]} has no tensor {e.args[0]!r}: not a Meta LLaMA checkpoint")
    try:
        return ModelConfig(vocab_size=vocab, block_size=p.get("max_seq_len", 2048), n_layer=p["n_layers"],
                           n_embd=p["dim"], n_head=p["n_heads"], n_kv_head=p.get("n_kv_heads") or p["n_heads"],
                           ffn_dim=ffn, norm_eps=p.get("norm_eps", 1e-6), rope_theta=float(p.get("rope_theta", 10000.0)))
    except KeyError as e:
        raise InputError(f"{path}/params.json lacks {e.args[0]!r}: download it again")
    except ValueError as e:
        raise InputError(f"{path}/params.json describes no model ({e}): download it again")


# ----------------------------------------------------------------------------- reading tensors

def _torch_load(f):
    try:
        try:  # memory-mapped: a shard's tensors are paged in as they are used, not all at once
            return torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(f, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
    except Exception as e:  # an UnpicklingError's text advises weights_only=False: not for a file that is no weights
        why = "" if isinstance(e, pickle.UnpicklingError) else f": {(str(e).splitlines() or [''])[0]}"
        raise InputError(f"cannot read {f} as a weights file ({type(e).__name__}{why}): download it again")


def _read_file(f):
    """(name, tensor) pairs of one weights file, one tensor at a time for safetensors."""
    if f.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(f, framework="pt") as s:
                for k in s.keys():
                    yield k, s.get_tensor(k)
        except Exception as e:
            raise InputError(f"cannot read {f} ({type(e).__name__}: {e}): download it again")
    else:
        yield from _torch_load(f).items()


def _safetensors(file, read):
    """read(handle) of a safetensors file; a missing, truncated or damaged one stops with one line."""
    from safetensors import safe_open
    try:
        with safe_open(file, framework="pt") as s:
            return read(s)
    except Exception as e:
        raise InputError(f"cannot read {file} ({type(e).__name__}: {e}): it is damaged or incomplete; download it "
                         "again")


def _tensor_names(files):
    """The tensor names of weights files, from the safetensors headers (or the memory-mapped .bin)."""
    names = set()
    for f in files:
        names |= _safetensors(f, lambda s: set(s.keys())) if f.endswith(".safetensors") else set(_torch_load(f))
    return names


def write_index(path, weight_map, total_size):
    """model.safetensors.index.json of a sharded folder: which file holds each tensor, and their total bytes."""
    write_json(os.path.join(path, "model.safetensors.index.json"),
               {"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)


def refuse_gguf(path):
    """One line for a GGUF file, or a folder of them: llama.cpp's quantized format is not read here."""
    gguf = sorted(glob.glob(os.path.join(path, "*.gguf"))) if os.path.isdir(path) else [path]
    if gguf and os.path.isfile(gguf[0]) and (gguf[0].endswith(".gguf") or open(gguf[0], "rb").read(4) == b"GGUF"):
        raise InputError(f"{gguf[0]} is a GGUF file (llama.cpp's format), which nanoELM does not read: use the "
                         f"model's Hugging Face directory (safetensors or pytorch_model.bin)")


def _weight_files(path):
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if os.path.isfile(os.path.join(path, index)):
            files = sorted(set(_read_json(os.path.join(path, index))["weight_map"].values()))
            for f in files:
                if not os.path.isfile(os.path.join(path, f)):
                    raise InputError(f"shard {os.path.join(path, f)} (listed in {index}) is missing: download it "
                                     "again")
            return [os.path.join(path, f) for f in files]
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
    refuse_gguf(path)
    raise InputError(f"{path} has config.json but no weights: expected model.safetensors, pytorch_model.bin, or "
                     "shards with model.safetensors.index.json / pytorch_model.bin.index.json")


def _read_meta(files):
    """(label, name, tensor) of Meta's consolidated shards, model-parallel pieces concatenated back."""
    if len(files) == 1:
        yield from ((files[0], k, v) for k, v in _torch_load(files[0]).items())
        return
    sds = [_torch_load(f) for f in files]
    label = os.path.join(os.path.dirname(files[0]), "consolidated.*.pth")
    for name, t in sds[0].items():
        if any(name not in sd for sd in sds):
            raise InputError(f"tensor {name!r} is missing from some of {label}: download them again")
        key = name.split(".")[-2] if name.count(".") else name
        yield label, name, torch.cat([sd[name] for sd in sds], META_CAT_DIM[key]) if key in META_CAT_DIM else t


def _sources(table, ours):
    """The external names behind our parameter `ours`, e.g. layers.3.attn.qkv_proj.weight -> q/k/v of layer 3."""
    m = re.match(r"layers\.(\d+)\.(.*)", ours)
    key = f"layers.{{i}}.{m.group(2)}" if m else ours
    return [s.format(i=m.group(1)) if m else s for s in table[key]]


def _rows(model, ours, n):
    """Rows of each of the n external tensors stacked into our parameter (q/k/v differ under GQA)."""
    if ours.endswith("qkv_proj.weight") and n == 3:
        a = model.get_submodule(ours[: -len(".qkv_proj.weight")])
        return [a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim]
    return [model.get_parameter(ours).shape[0] // n] * n


def _unpermute(w, n_heads):
    """Interleaved-RoPE rows (Meta, EasyLM) -> rotate-half rows: row r of a head <- row 2r, row hd/2+r <- 2r+1."""
    hd = w.shape[0] // n_heads
    return w.view(n_heads, hd // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def load_model(path, device="cpu", dtype=None):
    """A Transformer from a Hugging Face or Meta directory, in the stored dtype unless dtype is given.
    Built on the meta device and filled tensor by tensor, so a 7B model never exists twice in memory."""
    path = os.path.expanduser(str(path))
    if os.path.isfile(os.path.join(path, "config.json")):
        _read_json(os.path.join(path, "config.json"))  # a damaged one is named as such, not as "no model_type"
    if not is_hf_dir(path):
        raise InputError(f"{path} is not a Hugging Face directory (config.json with a model_type) nor a Meta one "
                         "(params.json + consolidated.*.pth)")
    config = load_config(path)
    meta = _is_meta(path)
    if meta:
        table, tensors = META, _read_meta(_meta_files(path))
    else:
        cfg = _read_json(os.path.join(path, "config.json"))
        quant = cfg.get("quantization") or cfg.get("quantization_config")
        if quant:  # mlx-lm writes "quantization", transformers' quantizers "quantization_config"
            fix = (f"dequantize it first (python -m mlx_lm.convert --hf-path {path} --mlx-path OUT -d)"
                   if "quantization" in cfg else "use the full-precision original")
            raise InputError(f"{path} holds a quantized model ({json.dumps(quant)[:80]}): nanoELM loads "
                             f"full-precision weights; {fix}")
        files = _weight_files(path)
        table = OPENELM if cfg["model_type"] == "openelm" else LLAMA
        tensors = ((f, k, v) for f in files for k, v in _read_file(f))
        dtype = dtype or cfg.get("torch_dtype") or cfg.get("dtype")  # the stored dtype, unless asked otherwise
    dtype = torch_dtype(dtype, f"{path}'s torch_dtype") if dtype is not None else None
    with torch.device("meta"):
        model = Transformer(config)
    want = {ours: _sources(table, ours) for ours, _ in model.named_parameters()}
    owner = {src: ours for ours, srcs in want.items() for src in srcs}
    pending, done = {}, set()  # parts of fused parameters wait here until all of them have been read
    for f, name, t in tensors:
        if IGNORED.search(name) or (name == "lm_head.weight" and config.tie_embeddings) or name == OPENELM_UNUSED:
            continue  # stale RoPE buffers; a tied model's copy of the embedding; a layer Apple's code never calls
        if name.endswith((".scales", ".biases")):
            raise InputError(f"{path} is an MLX-quantized model ({name!r}): nanoELM loads full-precision weights; "
                             f"dequantize it (python -m mlx_lm.convert --hf-path {path} --mlx-path OUT -d) or use the "
                             f"original Hugging Face weights")
        if not t.is_floating_point():  # a quantizer's packed integers, or a damaged file: cast, they would be noise
            raise InputError(f"{f}: tensor {name!r} holds {str(t.dtype).removeprefix('torch.')} values, not "
                             "floating-point weights: a quantized or damaged checkpoint; use the full-precision original")
        if name not in owner:
            raise InputError(f"{f}: unexpected tensor {name!r} for this config (layers={config.n_layer}, "
                             f"tied={config.tie_embeddings}): config.json does not match the weights, or this is not "
                             "an OpenELM/LLaMA checkpoint")
        ours = owner[name]
        pending.setdefault(ours, {})[name] = (f, t)
        if len(pending[ours]) < len(want[ours]):
            continue
        parts, shape = pending.pop(ours), model.get_parameter(ours).shape
        parts = [parts[s] for s in want[ours]]
        for (f, t), src, rows in zip(parts, want[ours], _rows(model, ours, len(parts))):
            if tuple(t.shape) != (rows, *shape[1:]):
                raise InputError(f"{f}: tensor {src!r} has shape {tuple(t.shape)}, but the config implies "
                                 f"{(rows, *shape[1:])}")
        ts = [t for _, t in parts]
        if meta and ours.endswith("qkv_proj.weight"):  # Meta/EasyLM rotate interleaved pairs: permute q, k
            attn = model.get_submodule(ours[: -len(".qkv_proj.weight")])
            ts = [_unpermute(ts[0], attn.n_head), _unpermute(ts[1], attn.n_kv_head), ts[2]]
        # copy=True: fresh, aligned memory we own, never pages of a mapped file that may be replaced later
        t = (torch.cat(ts) if len(ts) > 1 else ts[0]).to(device=device, dtype=dtype or ts[0].dtype, copy=True)
        module, attr = ours.rsplit(".", 1)
        setattr(model.get_submodule(module), attr, nn.Parameter(t.contiguous()))
        done.add(ours)
    missing = [s for ours, srcs in want.items() if ours not in done for s in srcs if s not in pending.get(ours, {})]
    if missing:
        raise InputError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all): the download is "
                         "incomplete or config.json does not match the weights")
    return model


# ----------------------------------------------------------------------------- tokenizer

def load_tokenizer(path, tokenizer=None, required=True):
    """The tokenizer of a model directory: its SentencePiece tokenizer.model, else its tokenizer.json (with
    tokenizer_config.json), or the file `tokenizer`; checked against the model's vocabulary. Callers prepend BOS
    with encode(text, bos=True), as LLaMA and OpenELM were trained. When the directory has none: an error saying
    how to supply one, or None if not required."""
    path = os.path.expanduser(str(path))
    file = os.path.expanduser(str(tokenizer)) if tokenizer else tokenizer_file(path)
    if not tokenizer and _is_meta(path) and not os.path.isfile(file):  # Meta's downloads keep it one folder up
        file = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer.model")
    config = load_config(path)
    if not os.path.isfile(file):
        if not tokenizer and not required:
            return None
        if tokenizer:
            raise InputError(f"tokenizer file {file} not found")
        if config.qkv_multipliers is not None:
            raise InputError(f"{path} is an OpenELM checkpoint, which ships no tokenizer: it uses Llama-2's. Copy "
                             f"tokenizer.model from meta-llama/Llama-2-7b-hf into {path} (or pass "
                             "tokenizer=/path/to/tokenizer.model)")
        raise InputError(f"{path} has no tokenizer.model or tokenizer.json: copy the model's tokenizer there (or pass "
                         f"--tokenizer=...)")
    tok = Tokenizer(file)
    if not fits(tok.vocab_size, config.vocab_size):
        raise InputError(f"tokenizer {file} has {tok.vocab_size} pieces but the model in {path} has "
                         f"{config.vocab_size} embedding rows: use the tokenizer the model was trained with")
    if tok.decode(tok.encode("a    b")) != "a    b":  # OpenLLaMA v1's tokenizer does this (its README)
        print(f"warning: tokenizer {file} collapses runs of spaces (OpenLLaMA v1 does): indentation is lost, "
              f"so code comes out wrong; prefer the v2 models for code", file=sys.stderr)
    return tok


# ----------------------------------------------------------------------------- export

def _openelm_hf_config(c, dtype):
    dims = c.layer_dims()
    if not (isinstance(c.qkv_multipliers, (int, float)) or len(c.qkv_multipliers) == 2):
        raise InputError("OpenELM's modeling code takes qkv_multipliers as a number or a (lo, hi) range, not a "
                         "per-layer list")
    if c.norm_eps != 1e-6:
        print(f"warning: OpenELM's modeling code fixes RMSNorm eps at 1e-6; this model uses {c.norm_eps}", file=sys.stderr)
    # no auto_map: it would name modeling files the export does not ship (and make transformers ask, even for the
    # tokenizer, whether to run code it cannot find); those who have Apple's files pass trust_remote_code and them
    return {"architectures": ["OpenELMForCausalLM"], "model_type": "openelm",
            "num_transformer_layers": c.n_layer, "model_dim": c.n_embd, "head_dim": c.dim_head,
            "num_gqa_groups": c.num_gqa_groups, "num_query_heads": [d[0] for d in dims],
            "num_kv_heads": [d[1] for d in dims],
            "qkv_multipliers": c.qkv_multipliers if isinstance(c.qkv_multipliers, (int, float)) else list(c.qkv_multipliers),
            "ffn_multipliers": per_layer(c.ffn_multipliers, c.n_layer),  # stored per layer, already rounded, as the Hub's
            "ffn_dim_divisor": c.ffn_dim_divisor, "ffn_with_glu": True, "activation_fn_name": "swish",
            "normalization_layer_name": "rms_norm", "normalize_qk_projections": c.qk_norm,
            # transformers defaults tie_word_embeddings to true, which would replace an untied lm_head by the embedding
            "share_input_output_layers": c.tie_embeddings, "tie_word_embeddings": c.tie_embeddings,
            "rope_freq_constant": int(c.rope_theta),
            "rope_max_length": max(4096, c.block_size), "max_context_length": c.block_size,
            "vocab_size": c.vocab_size, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
            "torch_dtype": str(dtype).replace("torch.", ""), "transformers_version": _transformers_version()}


def _llama_hf_config(c, dtype):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "intermediate_size": c.ffn_dim, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head or c.n_head, "head_dim": c.dim_head,
            "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta, "rope_scaling": None, "tie_word_embeddings": c.tie_embeddings,
            "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pretraining_tp": 1,
            "initializer_range": c.init_std, "use_cache": True, "torch_dtype": str(dtype).replace("torch.", ""),
            "transformers_version": _transformers_version()}


def _transformers_version():
    from importlib import metadata
    try:  # informational, as in the Hub's files; read from the package metadata, not by importing transformers
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def save_model(model, path, tokenizer=None, dtype=None, max_shard_size=5 * 2**30):
    """Write model as a Hugging Face directory: LlamaForCausalLM for uniform LLaMA-shaped models, the Hub's
    OpenELM layout for layer-wise scaled ones. tokenizer (a tokenizer.Tokenizer or a tokenizer.model path) is
    copied along. Each file is written under a temporary name and renamed into place."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    c = model.config
    openelm = c.qkv_multipliers is not None
    if c.qk_norm and not openelm:
        raise InputError("a model with qk_norm but uniform layers has no Hugging Face format: transformers' Llama "
                         "has no QK-norm and OpenELM's code needs layer-wise scaling (qkv_multipliers)")
    if not openelm and c.n_embd % c.n_head:  # LlamaConfig's validate_architecture, even with head_dim given
        raise InputError(f"width {c.n_embd} is not a multiple of the {c.n_head} heads: transformers' LlamaConfig "
                         f"refuses such a model (and so do mlx-lm and AutoTokenizer on its folder), whatever head_dim "
                         f"says; there is no Hugging Face form of it to export")
    dtype = torch_dtype(dtype) if dtype is not None else model.tok_embeddings.weight.dtype
    table = OPENELM if openelm else LLAMA
    tensors = {}  # external name -> a view of our parameter (q/k/v and gate/up split apart); cast one shard at a time
    for ours, t in model.state_dict().items():
        srcs = _sources(table, ours)
        tensors.update(zip(srcs, t.split(_rows(model, ours, len(srcs)))))
    shards, size = [[]], 0
    for name, t in tensors.items():
        nbytes = t.numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    os.makedirs(path, exist_ok=True)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for pattern in ("model*.safetensors*", "pytorch_model*.bin*"):
        for old in glob.glob(os.path.join(path, pattern)):
            if os.path.basename(old) not in names:  # a stale file of an earlier export would shadow or mix with ours
                os.remove(old)
    from safetensors.torch import save_file
    t0 = time.time()
    for i, (fname, keys) in enumerate(zip(names, shards)):
        atomic_write(os.path.join(path, fname), lambda tmp: save_file(
            {k: tensors[k].to(device="cpu", dtype=dtype).contiguous() for k in keys}, tmp, metadata={"format": "pt"}))
        if n > 1:
            print(f"wrote {fname} ({i + 1}/{n}, {time.time() - t0:.0f}s)")
    if n > 1:
        write_index(path, {k: fname for fname, keys in zip(names, shards) for k in keys},
                    sum(t.numel() * dtype.itemsize for t in tensors.values()))
    write_json(os.path.join(path, "config.json"), (_openelm_hf_config if openelm else _llama_hf_config)(c, dtype), indent=2)
    tok_note = _save_tokenizer(tokenizer, path, c)
    print(f"saved {'OpenELM' if openelm else 'LLaMA'} model ({model.num_params() / 1e6:.2f}M params, {dtype}, "
          f"{n} file{'s' * (n > 1)}) to {path}{tok_note}")


def _save_tokenizer(tokenizer, path, c):
    if tokenizer is None:
        return ", no tokenizer"
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)  # a path or a tokenizer.Tokenizer
    if tok.kind == "tiktoken":
        print(f"warning: {tok.name} is a tiktoken encoding, not a file: the export carries no tokenizer", file=sys.stderr)
        return ", no tokenizer"
    if tok.kind == "tokenizers":  # tokenizer.json (and tokenizer_config.json) as they are: transformers reads them
        for f in tok.files:
            dst = os.path.join(path, os.path.basename(f))
            if os.path.abspath(f) != os.path.abspath(dst):
                atomic_write(dst, lambda tmp, f=f: shutil.copyfile(f, tmp))
        if len(tok.files) == 1:  # name the special tokens' roles, which tokenizer.json alone does not
            name = tok._fast.id_to_token
            write_json(os.path.join(path, "tokenizer_config.json"), {
                "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(tok.bos_id),
                "eos_token": name(tok.eos_id), "pad_token": None if tok.pad_id is None else name(tok.pad_id),
                "model_max_length": c.block_size}, indent=2)
        return ", with tokenizer.json"
    file = tok.name
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(file))
    if os.path.abspath(file) != os.path.abspath(os.path.join(path, "tokenizer.model")):
        atomic_write(os.path.join(path, "tokenizer.model"), lambda tmp: shutil.copyfile(file, tmp))
    piece = lambda i: sp.id_to_piece(i) if i >= 0 else None
    # LlamaTokenizer settings: BOS prepended, no EOS, as the models were trained and are prompted; the leading
    # space only where SentencePiece adds one (LLaMA's does, prepare.py's does not), so ids match ours exactly
    write_json(os.path.join(path, "tokenizer_config.json"), {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "add_prefix_space": sp.encode("a", out_type=str)[0].startswith("\u2581"),
        "bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id()), "unk_token": piece(sp.unk_id()),
        "pad_token": piece(sp.pad_id()), "model_max_length": c.block_size}, indent=2)
    return ", with tokenizer.model"
