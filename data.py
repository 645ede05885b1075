"""
A prepared data folder, as prepare.py writes it and train.py, eval.py and checkpoint.py read it:

    data/<name>/meta.json          tokenizer, vocab size, bos/eos/pad ids, token dtype, the splits and their files
    data/<name>/<split>.bin        token ids, a flat uint16 (or uint32) array; <split>_NNN.bin when sharded
    data/<name>/<split>.mask.bin   chat rows only: one byte per token, 1 where the token is a trained target
    data/<name>/tokenizer.model    the tokenizer (SentencePiece; or tokenizer.json with tokenizer_config.json),
                                   unless meta.json names a tiktoken encoding

meta.json is written and read here and nowhere else.
"""
import os
import platform

import numpy as np
import torch

from configurator import InputError
from files import read_json, write_json
from model import IGNORE_INDEX
from tokenizer import Tokenizer


def token_dtype(vocab, choice="auto"):
    if choice not in ("auto", "uint16", "uint32"):
        raise InputError(f"dtype={choice!r}: use 'auto', 'uint16' or 'uint32'")
    if choice == "uint16" and vocab > 2**16:
        raise InputError(f"a vocabulary of {vocab} tokens does not fit uint16 (at most 65536): use --dtype=auto")
    return "uint16" if choice == "uint16" or (choice == "auto" and vocab <= 2**16) else "uint32"


def write_meta(data_dir, splits, tok=None, dtype=None, source="", vocab_size=None, bos_id=None, eos_id=None,
               pad_id=None, **layout):
    """meta.json of a data folder. tok: the Tokenizer the files were made with (its kind and file are recorded);
    without one (random tokens for a benchmark) give vocab_size and the ids. layout: "stream" (documents
    concatenated) or "rows" (chat rows; with seq_len, packing, chat_format)."""
    vocab_size = vocab_size or tok.vocab_size
    meta = {"tokenizer": tok.kind if tok else None,
            "tokenizer_file": os.path.basename(tok.name) if tok and tok.kind != "tiktoken" else None,
            "tokenizer_files": [os.path.basename(f) for f in tok.files] if tok else [],
            "tiktoken_encoding": tok.spec.split(":", 1)[1] if tok and tok.kind == "tiktoken" else None,
            "vocab_size": vocab_size, "dtype": dtype or token_dtype(vocab_size),
            "bos_id": tok.bos_id if tok else bos_id, "eos_id": tok.eos_id if tok else eos_id,
            "pad_id": tok.pad_id if tok else pad_id,
            "source": f"stdlib:{platform.python_version()}" if source == "stdlib" else source, "splits": splits,
            "layout": "stream", **layout}
    write_json(os.path.join(data_dir, "meta.json"), meta)
    return meta


def read_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    meta = read_json(path, "prepare the data first (python prepare.py --name=...)")
    try:  # what every reader relies on, so a damaged or hand-edited file stops here, named
        assert isinstance(meta["vocab_size"], int) and meta["dtype"] in ("uint16", "uint32")
        assert all(isinstance(v["files"], list) for v in meta["splits"].values())
        assert meta.get("layout", "stream") == "stream" or isinstance(meta["seq_len"], int)
    except (AssertionError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path} is damaged ({type(e).__name__}{': ' + str(e) if str(e) else ''}): re-run prepare.py "
                         f"for {data_dir}")
    return meta


def load_tokenizer(data_dir):
    """The tokenizer a data folder was prepared with."""
    meta = read_meta(data_dir)
    if meta["tokenizer"] == "tiktoken":
        return Tokenizer("tiktoken:" + meta["tiktoken_encoding"])
    if not meta.get("tokenizer_file"):
        raise InputError(f"{data_dir} names no tokenizer file in its meta.json: prepare it with prepare.py, or pass a "
                         f"tokenizer.model file")
    return Tokenizer(os.path.join(data_dir, meta["tokenizer_file"]))


def has_tokenizer(data_dir):
    """Whether a folder with a meta.json carries the tokenizer it names (a checkpoint copies both)."""
    meta = read_meta(data_dir)
    return meta.get("tokenizer") == "tiktoken" or bool(
        meta.get("tokenizer_file") and os.path.isfile(os.path.join(data_dir, meta["tokenizer_file"])))


def open_split(data_dir, split, files="files", dtype=None):
    """A split's token files as read-only memmaps, in order (an empty split gives []); files="mask_files" and
    dtype=np.uint8 give a chat split's masks."""
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise InputError(f"{data_dir} has no {split!r} split: choose one of {sorted(meta['splits'])}")
    paths = [os.path.join(data_dir, f) for f in meta["splits"][split].get(files, [])]
    dtype = np.dtype(dtype or meta["dtype"])
    for p in paths:
        if not os.path.isfile(p):
            raise InputError(f"token file {p} is missing: re-run prepare.py for {data_dir}")
        size = os.path.getsize(p)
        if size == 0 or size % dtype.itemsize:
            raise InputError(f"token file {p} is damaged ({size} bytes: not a whole number of {dtype} tokens): re-run "
                             f"prepare.py for {data_dir}")
    info, rows = meta["splits"][split], meta.get("layout") == "rows"
    tokens = info.get("rows", 0) * meta.get("seq_len", 0) if rows else info.get("tokens")  # a token or a mask byte each
    if tokens is not None and sum(map(os.path.getsize, paths)) != tokens * dtype.itemsize:
        raise InputError(f"the {split} {files.replace('_', ' ')} of {data_dir} hold {sum(map(os.path.getsize, paths)):,} "
                         f"bytes, but meta.json says {tokens:,} {dtype} values: it does not describe them; re-run "
                         f"prepare.py for {data_dir}")
    return [np.memmap(p, dtype=dtype, mode="r") for p in paths]


def open_rows(data_dir, split):
    """A chat split as read-only memmaps (tokens, mask), both (rows, seq_len); mask is uint8, 1 where the token is a
    trained target. An empty split (no files: numpy cannot memory-map an empty one) gives (0, seq_len) arrays."""
    meta = read_meta(data_dir)
    if meta.get("layout", "stream") != "rows":
        raise InputError(f"{data_dir} holds a token stream, not chat rows: prepare it with --chat_format=... (or "
                         "read it with open_split)")
    T = meta["seq_len"]
    tokens, mask = open_split(data_dir, split), open_split(data_dir, split, "mask_files", np.uint8)
    if not tokens:
        return np.zeros((0, T), meta["dtype"]), np.zeros((0, T), np.uint8)
    return tokens[0].reshape(-1, T), mask[0].reshape(-1, T)


def read_rows(rows, idx):
    """(x, y) int64 tensors of the chat rows idx (indices or a slice) of (tokens, mask) from open_rows: a target
    is the next token where the mask marks it an assistant token, IGNORE_INDEX elsewhere (and at the end)."""
    tokens, mask = rows
    x = torch.from_numpy(tokens[idx].astype(np.int64))
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, :-1] = torch.where(torch.from_numpy(mask[idx][:, 1:].astype(bool)), x[:, 1:], IGNORE_INDEX)
    return x, y
