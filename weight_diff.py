"""
Weight diffs, the way Stanford Alpaca and Open-Instruct published tuned LLaMA models: tuned - base, tensor by
tensor, as a model directory to which whoever holds the base weights adds them back. Here recovery is exact
to the bit, and checked:

    python weight_diff.py make    --base=PATH --tuned=PATH --out=DIR   # prints the tuned model's checksum
    python weight_diff.py recover --base=PATH --diff=DIR  --out=DIR    # the tuned model, verified

PATH is a Hugging Face directory (safetensors or pytorch_model*.bin, sharded or not) or one of our run or
checkpoint folders; base and tuned are of one kind (make ours a Hugging Face one with export.py).

- Exact. a - b + b can miss a by an ulp in a's precision, so each diff is stored one precision wider (float32
  for bf16/fp16, float64 for fp32/fp64) and make replays the recovery of every tensor. Elements that still do
  not come back bit for bit (a weight that shrank 2^16-fold or more in bf16, 2^29 in fp32; a -0.0; an overflow)
  are stored in fixups.safetensors as flat indices and tuned values. Integer tensors are diffed in int64, which
  wraps around and back exactly.
- Checked. weight_diff.json holds the sha256 of each tensor's bytes in base and tuned and one checksum over the
  tuned ones to publish. recover refuses a base other than the diff's, checks every recovered tensor, and
  renames its output into place only when all of them matched.
- Streaming. Tensors are read, diffed and written one at a time (write_safetensors writes the header first,
  from the shapes alone), so a 7B model is never in memory twice. Recovery into our format holds one copy,
  since DCP saves a whole state dict.

The diff of a Hugging Face model is a Hugging Face directory (config.json, tokenizer files, the tuned model's
tensor names and sharding, the wider dtype); the diff of ours holds our plain parameter names in
model.safetensors, and the tuned checkpoint's train.json, meta.json and tokenizer.
"""
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from functools import lru_cache

import torch
import torch.distributed.checkpoint as dcp

import checkpoint
import configurator
import hf
from configurator import InputError
from files import atomic_write, check_output, read_json, write_json

# ----------------------------------------------------------------------------- settings
base = ""  # the base model: a Hugging Face directory, or one of our run or checkpoint folders
tuned = ""  # make: the finetuned model, of the same kind as base
diff = ""  # recover: the directory make wrote
out = ""  # the directory to create; refused when it exists and is not empty
# -----------------------------------------------------------------------------

ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
             torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
FROM_ST = {v: k for k, v in ST_DTYPES.items()}
BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integers: compare bit patterns
NOT_COPIED = re.compile(r"\.(safetensors|bin|pth|pt|distcp)$|\.index\.json$|^\.metadata$|^weight_diff\.json$|^\.lock$")
FIXUPS = "fixups.safetensors"  # beside the weights but not in the index: model loaders never see it
KIND = {"hf": "a Hugging Face directory", "ours": "one of our checkpoints"}


def wide(dtype):
    """The dtype the diff of a `dtype` tensor is stored in."""
    if dtype.is_floating_point:
        return torch.float64 if dtype.itemsize >= 4 else torch.float32
    return torch.int64


def add_diff(b, d, dtype, index=None, value=None):
    """One tensor's recovery: base + diff in the diff's precision, rounded to `dtype`, then the fixups."""
    r = b.to(d.dtype, copy=True).add_(d).to(dtype)
    if index is not None:
        r.view(-1)[index] = value
    return r


def bits(t):
    return t.reshape(-1).view(BITS[t.dtype.itemsize])


def sha256(t):
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def checksum(hashes):
    """One sha256 over every tensor's name and hash, in name order: the number a README publishes."""
    return hashlib.sha256("".join(f"{k} {hashes[k]}\n" for k in sorted(hashes)).encode()).hexdigest()


def write_safetensors(path, specs, tensors, metadata=None):
    """Stream `tensors` (an iterable yielding them in the order of specs, [(name, dtype, shape)]) into a
    safetensors file, one in memory at a time: the header needs only dtypes and shapes, so it goes first. The
    format: the header's length (u64, little-endian), the JSON header padded with spaces to a multiple of 8
    bytes (the data stays aligned for zero-copy readers), then the raw little-endian bytes."""
    header, offset = {}, 0
    for name, dtype, shape in specs:
        n = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt", **(metadata or {})}  # transformers refuses files without "format"
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for (name, dtype, shape), t in zip(specs, tensors, strict=True):
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise ValueError(f"{name}: got {t.dtype} {tuple(t.shape)}, the header says {dtype} {tuple(shape)}")
                f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    atomic_write(path, write)


_bin = lru_cache(maxsize=2)(hf._torch_load)  # memory-mapped: base's and tuned's current files stay open


def _entries(f):
    """{name: (dtype, shape)} of one weights file: a safetensors header, or a memory-mapped .bin."""
    if f.endswith(".safetensors"):
        return hf._safetensors(f, lambda s: {k: (FROM_ST.get(s.get_slice(k).get_dtype()), s.get_slice(k).get_shape())
                                          for k in s.keys()})
    return {k: (t.dtype, t.shape) for k, t in _bin(f).items()}


def _spec(dtype, shape):
    return f"{str(dtype).removeprefix('torch.')} {list(shape)}"


class Source:
    """The tensors of a Hugging Face directory or of one of our checkpoints: dtypes and shapes from the headers
    and metadata alone, then each tensor read on its own."""

    def __init__(self, path, what):
        self.path = os.path.expanduser(path)
        if not os.path.isdir(self.path):
            raise InputError(f"--{what}={path} not found: give a Hugging Face model directory or one of our "
                             "run/checkpoint folders")
        ck, self.entries = checkpoint.resolve(self.path), {}  # name -> (file or None, dtype, shape), in file order
        if ck and checkpoint.read_info(ck).get("lora"):
            raise InputError(f"--{what}={path} holds LoRA adapters, not a model: export it merged (python export.py "
                             f"--init_from={path} --out=...) and diff that against the base's Hugging Face directory")
        if ck:
            self.kind, self.format, self.path = "ours", "dcp", ck
            for k, m in dcp.FileSystemReader(ck).read_metadata().state_dict_metadata.items():
                if k.startswith("model.") and hasattr(m, "size"):  # DCP flattens {"model": sd} to model.<name>
                    self.entries[k[len("model."):]] = (None, m.properties.dtype, tuple(m.size))
        elif os.path.isfile(os.path.join(self.path, "config.json")):
            self.kind, files = "hf", hf._weight_files(self.path)  # names its own error when there are no weights
            self.format = "safetensors" if files[0].endswith(".safetensors") else "pytorch_model.bin"
            self.entries = {k: (f, dtype, tuple(shape)) for f in files for k, (dtype, shape) in _entries(f).items()}
        else:
            raise InputError(f"--{what}={path} holds neither a Hugging Face model (config.json) nor one of our "
                             "checkpoints (convert a Meta download with export.py)")
        bad = next((k for k, (_, dtype, _) in self.entries.items() if dtype not in ST_DTYPES), None)
        if bad:
            raise InputError(f"{path}: tensor {bad!r} has a dtype weight_diff.py does not handle "
                             f"({self.entries[bad][1]})")
        self.specs = {k: _spec(dtype, shape) for k, (_, dtype, shape) in self.entries.items()}

    def read(self, name):
        f, dtype, shape = self.entries[name]
        if f is None:  # one key of the DCP checkpoint: only that tensor's bytes are read
            t = torch.empty(shape, dtype=dtype)
            checkpoint._dcp(dcp.load, {"model": {name: t}}, self.path)
            return t
        return hf._safetensors(f, lambda s: s.get_tensor(name)) if f.endswith(".safetensors") else _bin(f)[name]


def _same_tensors(a, b, names, fix):
    """a, b: {tensor: spec}. Stops at the first tensor in only one of them, or of another dtype or shape."""
    for k in [*a, *b]:
        if k not in a or k not in b:
            raise InputError(f"tensor {k!r} is only in {names[k in b]}: {fix}")
        if a[k] != b[k]:
            raise InputError(f"tensor {k!r} is {a[k]} in {names[0]} but {b[k]} in {names[1]}: {fix}")


@contextlib.contextmanager
def _output(path):
    """A temporary sibling folder, renamed to `path` when the block succeeds and removed when it fails."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise InputError(f"--out={path} exists and is not empty: choose a new directory or remove that one")
    full = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # debris of a run that was killed
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        os.rmdir(path)
    os.replace(tmp, path)


def _finish(dst, src, files, specs):
    """The index (unless the weights are one model.safetensors) and every file of src but the weights:
    config.json, tokenizer files, generation_config.json; train.json and meta.json for ours."""
    if files and list(files) != ["model.safetensors"]:
        hf.write_index(dst, {n: f for f, names in files.items() for n in names},
                       sum(math.prod(s) * d.itemsize for _, d, s in specs.values()))
    for f in sorted(os.listdir(src)):
        if os.path.isfile(os.path.join(src, f)) and not NOT_COPIED.search(f):
            shutil.copy2(os.path.join(src, f), dst)


def _progress(i, n, t0):
    if n >= 10 and (i + 1) % -(-n // 10) == 0:  # about ten lines per run
        print(f"  {i + 1}/{n} tensors ({time.time() - t0:.0f}s)", flush=True)


def make(base, tuned, out):
    """Write tuned - base into the directory `out`; returns the tuned model's overall checksum."""
    b, t = Source(base, "base"), Source(tuned, "tuned")
    if b.kind != t.kind:
        raise InputError(f"--base is {KIND[b.kind]} but --tuned is {KIND[t.kind]}: export ours with export.py so "
                         "both are Hugging Face directories")
    _same_tensors(b.specs, t.specs, ("base", "tuned"), "diff two models of one architecture and dtype "
                  "(export.py --dtype=... casts one)")
    files = {}  # output file -> tensors: the tuned model's sharding, in safetensors whatever it was
    for name, (f, _, _) in t.entries.items():
        stem = "model" if f is None else re.sub(r"^pytorch_model", "model", os.path.basename(f).rsplit(".", 1)[0])
        files.setdefault(stem + ".safetensors", []).append(name)
    specs = {n: (n, wide(dtype), shape) for n, (_, dtype, shape) in t.entries.items()}
    tensors, fixups, t0 = {}, {}, time.time()

    def diffs(fname, names):
        for name in names:
            x, y = b.read(name), t.read(name)
            d = y.to(wide(y.dtype), copy=True).sub_(x.to(wide(y.dtype)))
            miss = (bits(add_diff(x, d, y.dtype)) != bits(y)).nonzero().flatten()  # what the addition cannot recover
            if len(miss):
                fixups[name + ".__fixup_index"], fixups[name + ".__fixup_value"] = miss, y.reshape(-1)[miss]
            tensors[name] = {"dtype": str(y.dtype).removeprefix("torch."), "shape": list(y.shape), "file": fname,
                             "fixups": len(miss), "base_sha256": sha256(x), "tuned_sha256": sha256(y)}
            _progress(len(tensors) - 1, len(specs), t0)
            yield d

    with _output(out) as tmp:
        for fname, names in files.items():
            write_safetensors(os.path.join(tmp, fname), [specs[n] for n in names], diffs(fname, names),
                              {"weight_diff": "tuned - base"})
        if fixups:
            write_safetensors(os.path.join(tmp, FIXUPS), [(k, v.dtype, v.shape) for k, v in fixups.items()], fixups.values())
        _finish(tmp, t.path, files, specs)
        info = {"format": "nanoELM weight diff v1", "kind": t.kind, "base_format": b.format, "tuned_format": t.format,
                "base_checksum": checksum({k: v["base_sha256"] for k, v in tensors.items()}),
                "tuned_checksum": checksum({k: v["tuned_sha256"] for k, v in tensors.items()}),
                "fixup_elements": sum(v["fixups"] for v in tensors.values()), "tensors": tensors}
        write_json(os.path.join(tmp, "weight_diff.json"), info)
    print(f"wrote the diff of {len(tensors)} tensors to {out} ({info['fixup_elements']} elements stored as fixups, "
          f"{time.time() - t0:.1f}s)\ntuned checksum {info['tuned_checksum']}")
    return info["tuned_checksum"]


def recover(base, diff, out):
    """base + the diff in the directory `diff`, every tensor checked, written to the directory `out` in the tuned
    model's kind: a Hugging Face directory, or a weights-only checkpoint of ours. Returns the overall checksum."""
    diff = os.path.expanduser(diff)
    if not os.path.isdir(diff):
        raise InputError(f"--diff={diff} not found: give the directory that weight_diff.py make wrote")
    info = read_json(os.path.join(diff, "weight_diff.json"), "download the diff again", missing="it is not a diff "
                     "made by weight_diff.py make (recover a diff made by Alpaca's or Open-Instruct's script with theirs)")
    b, tensors = Source(base, "base"), info["tensors"]
    other = (f"the diff was made against another base (whose checksum is {info['base_checksum']}): give --base "
             f"the model it was made from")
    if b.kind != info["kind"]:
        raise InputError(f"--base is {KIND[b.kind]} but the diff was made against {KIND[info['kind']]}: give --base "
                         f"the model it was made from (checksum {info['base_checksum']})")
    _same_tensors(b.specs, {k: _spec(e["dtype"], e["shape"]) for k, e in tensors.items()}, ("base", "the diff"), other)
    hashes, t0 = {}, time.time()

    def recovered(name):
        e = tensors[name]
        x = b.read(name)
        if sha256(x) != e["base_sha256"]:  # before use: a wrong base gives a wrong model that looks fine
            raise InputError(f"base tensor {name!r} differs from the one the diff records: {other}")
        d = hf._safetensors(os.path.join(diff, e["file"]), lambda s: s.get_tensor(name))
        if list(d.shape) != e["shape"]:
            raise InputError(f"{diff}/{e['file']}: {name!r} has shape {list(d.shape)}, not {e['shape']}: download "
                             "the diff again")
        fix = [hf._safetensors(os.path.join(diff, FIXUPS), lambda s: s.get_tensor(name + k))
               for k in (".__fixup_index", ".__fixup_value")] if e["fixups"] else []
        y = add_diff(x, d, getattr(torch, e["dtype"]), *fix)
        hashes[name] = sha256(y)
        if hashes[name] != e["tuned_sha256"]:
            raise InputError(f"recovered tensor {name!r} does not match its checksum in weight_diff.json: the diff's "
                             "files are damaged; download them again")
        _progress(len(hashes) - 1, len(tensors), t0)
        return y

    with _output(out) as tmp:
        if info["kind"] == "hf":
            files, specs = {}, {n: (n, getattr(torch, e["dtype"]), tuple(e["shape"])) for n, e in tensors.items()}
            for name, e in tensors.items():
                files.setdefault(e["file"], []).append(name)
            for fname, names in files.items():
                write_safetensors(os.path.join(tmp, fname), [specs[n] for n in names], map(recovered, names))
        else:  # ours: weights only, which checkpoint.load_model (so sample.py, eval.py, hf.py) and finetuning read
            files, specs = {}, {}
            checkpoint._dcp(dcp.save, {"model": {name: recovered(name) for name in tensors}}, tmp)
        if checksum(hashes) != info["tuned_checksum"]:
            raise InputError(f"the recovered tensors' checksum {checksum(hashes)} is not the diff's "
                             f"{info['tuned_checksum']}: weight_diff.json is damaged; download the diff again")
        _finish(tmp, diff, files, specs)
        if info["kind"] == "ours":  # train.json came with the tuned run's checksums; these are other files
            checkpoint.seal(tmp)
    print(f"recovered {len(hashes)} tensors, checksum {info['tuned_checksum']} matches ({time.time() - t0:.1f}s)")
    return info["tuned_checksum"]


def main(argv):
    command = argv[0] if argv else ""
    if command not in ("make", "recover"):
        raise InputError(f"unknown command {command!r}: python weight_diff.py make --base=PATH --tuned=PATH "
                         "--out=DIR, or recover --base=PATH --diff=DIR --out=DIR")
    # only the four paths are settings, not the tables above
    s = configurator.configure({"base": base, "tuned": tuned, "diff": diff, "out": out, "__file__": __file__}, argv[1:])
    used, unused = ("tuned", "diff") if command == "make" else ("diff", "tuned")
    if s[unused]:
        raise InputError(f"{command} takes no --{unused} (make reads --base and --tuned; recover reads --base and --diff)")
    for key in ("base", used, "out"):
        if not s[key]:
            raise InputError(f"{command} needs --{key}=PATH")
    check_output(s["out"], "--out", folder=True)  # before reading gigabytes of weights
    if command == "make":
        return make(s["base"], s["tuned"], s["out"])
    return recover(s["base"], s["diff"], s["out"])


if __name__ == "__main__":
    configurator.main(main, sys.argv[1:])
