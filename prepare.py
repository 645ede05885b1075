"""
Text -> tokenizer + token files, the input of train.py and eval.py.

    python prepare.py                                        # Python's standard library, a trained 8192-piece BPE
    python prepare.py --source=my_corpus/ --tokenizer=llama/tokenizer.model --name=mine
    python prepare.py --source=hf:HuggingFaceFW/fineweb-edu --hf_config=sample-10BT --tokenizer=tiktoken:gpt2
    python prepare.py --source=alpaca_data.json --chat_format=alpaca --tokenizer=llama2/tokenizer.model --seq_len=1024
    python prepare.py --source=stdlib_functions --chat_format=messages --tokenizer=data/stdlib/tokenizer.model

writes data/<name>/ (the layout is in data.py): token files (flat uint16/uint32 arrays of token ids, every document
wrapped in BOS ... EOS), meta.json, the tokenizer's files (not for tiktoken) and manifest.json, the progress record a
re-run resumes from. With --chat_format, conversations instead: <split>.bin holds rows of seq_len tokens in the
Open-Instruct template (tokenizer.py) and <split>.mask.bin one byte per token, 1 where the token is a trained target
(assistant replies and their EOS).
"""
import ast
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import sys
import sysconfig
import time
from multiprocessing import Pool

import numpy as np

import configurator
from configurator import InputError
from data import read_meta, token_dtype, write_meta
from files import atomic_write, sole_writer, write_json
from tokenizer import Tokenizer, chat_text, encode_chat, turns

# -----------------------------------------------------------------------------
# settings: override with a config file or --key=value (see configurator.py)
source = "stdlib"  # "stdlib" (this interpreter's standard library), "stdlib_functions" (an instruction set made from it), a .txt/.jsonl/.parquet file or folder, or "hf:<dataset>"

name = ""  # output folder data_root/<name>; "" derives it from the source
replace = False  # a folder holding finished data made otherwise: False refuses it, True prepares it again in its place
data_root = "data"  # where the <name> folder goes
tokenizer = ""  # "" trains a SentencePiece BPE on the train split; or path/to/tokenizer.model or tokenizer.json; or "tiktoken:gpt2"
vocab_size = 8192  # vocabulary of the trained tokenizer (ignored for an existing one)
tokenizer_sentences = 25_000  # cap on the <=4000-character chunks the trainer sees (~80-100 MB, ~1 min on 2 cores)
text_field = "text"  # the text column of .jsonl/.parquet rows and Hugging Face datasets
extensions = ".txt .md .py .jsonl .parquet"  # file types picked up when walking a folder
doc_separator = ""  # split .txt files into documents on this string (e.g. "\n\n\n"); "" = a file is a document
hf_config = ""  # Hugging Face dataset config, e.g. "sample-10BT"
hf_split = "train"  # Hugging Face split to stream; we re-split it into train/val/test ourselves
max_documents = 0  # stop after this many documents (0 = all); bounds a streamed Hugging Face dataset
val_fraction = 0.01  # share of documents held out for validation
test_fraction = 0.01  # share held out for the test split, which neither training nor validation sees
shard_tokens = 100_000_000  # a split longer than this is written as <split>_000.bin, <split>_001.bin, ...
dtype = "auto"  # token file dtype: "auto" (uint16 when vocab_size <= 65536, else uint32), "uint16" or "uint32"
num_proc = max(1, min(8, os.cpu_count() or 1))  # tokenizer processes (and SentencePiece trainer threads)
# instruction (chat) data: conversations rendered in the Open-Instruct template, one row of seq_len tokens each
chat_format = ""  # "" = plain text pretraining; "alpaca", "dolly", "oasst1", "messages", or "auto" (from the first record's keys)
messages_field = "messages"  # the list of {"role", "content"} of the messages format, e.g. "chosen" for ultrafeedback_binarized
seq_len = 2048  # chat data: tokens per row, the finetuning context
packing = "padded"  # "padded": one conversation per row; "packed": whole conversations in order while they fit a row
overlong = "error"  # a conversation longer than seq_len: "error" (stop and name it), "drop" (skip, counted) or "truncate"
# -----------------------------------------------------------------------------
_SETTINGS = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, str))]
_SPLITS = ("train", "val", "test")
_CHUNK_CHARS = 4000  # SentencePiece trains on "sentences"; we give it runs of whole lines up to this long
_BATCH_CHARS = 4 << 20  # text per tokenizer process per round: bounds memory, keeps the progress bar moving


# -----------------------------------------------------------------------------
# sources: (key, text) per document in a fixed order; the key alone decides the split


def split_of(key, val=0.01, test=0.01):
    """train/val/test from a document's key (its path relative to the source root, '#row' for rows). sha256,
    not Python's salted hash(): the same file lands in the same split on every run and every machine."""
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if u < val else "test" if u < val + test else "train"


def stdlib_root():
    return sysconfig.get_paths()["stdlib"]


def source_files(src, exts=extensions):
    """(root, sorted file list) of a local source; "stdlib" is its .py files, site-packages left out."""
    if src == "stdlib":
        root, exts, prune = stdlib_root(), (".py",), {"site-packages", "dist-packages"}
    elif os.path.isdir(src):
        root, exts, prune = src, tuple(exts.split()), set()
    elif os.path.isfile(src):
        return os.path.dirname(src) or ".", [src]
    else:
        raise InputError(f"source {src!r} not found: give 'stdlib', an existing .txt/.jsonl/.parquet file or folder, "
                         "or 'hf:<dataset>'")
    files = []
    for d, dirs, names in os.walk(root):  # top-down, so sorting dirs in place fixes the whole order
        dirs[:] = sorted(x for x in dirs if x not in prune and x != "__pycache__" and not x.startswith("."))
        files += [os.path.join(d, f) for f in sorted(names) if f.endswith(exts)]
    if not files:
        raise InputError(f"source {src!r} holds no files ending in {' '.join(exts)}: give a folder that does (for "
                         "text, --extensions names the types)")
    return root, files


def documents(src, text_field="text", exts=extensions, doc_separator="", hf_config="", hf_split="train", skipped=None):
    """Yield (key, text) for every non-empty document. Files that cannot be read or are not UTF-8, and .jsonl
    lines that are not JSON, are skipped and appended to `skipped` as (where, why)."""
    skipped = [] if skipped is None else skipped
    if src.startswith("hf:"):
        yield from _hf_documents(src[3:], text_field, hf_config, hf_split)
        return
    root, files = source_files(src, exts)
    for path in files:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        try:
            if path.endswith(".jsonl"):
                rows = _jsonl_rows(path, text_field, skipped)
            elif path.endswith(".parquet"):
                rows = _parquet_rows(path, text_field)
            else:
                with open(path, encoding="utf-8", newline="") as f:  # newline="": \r\n stays as written
                    text = f.read()
                if not doc_separator:
                    yield from [(rel, text)] if text else []
                    continue
                rows = text.split(doc_separator)
            yield from ((f"{rel}#{i}", t) for i, t in enumerate(rows) if t)
        except InputError:  # a ValueError too, but the user's to fix, not a file to skip
            raise
        except (OSError, ValueError) as e:  # ValueError: UnicodeDecodeError, pyarrow's ArrowInvalid
            skipped.append((path, type(e).__name__))


def _jsonl_records(path, skipped):
    """(line number, parsed JSON) for the non-blank lines of a .jsonl file."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                skipped.append((f"{path}:{lineno}", type(e).__name__))


def _jsonl_rows(path, field, skipped):
    for lineno, row in _jsonl_records(path, skipped):
        if not isinstance(row, dict) or field not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise InputError(f"{path}:{lineno} has no {field!r} field (it has {keys}): set --text_field")
        yield row[field] or ""


def _parquet_rows(path, field=None):
    """The texts of column `field`, or with no field the whole rows as dicts."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"reading {path} needs pyarrow: pip install pyarrow")
    pf = pq.ParquetFile(path)
    if field is not None and field not in pf.schema_arrow.names:
        raise InputError(f"{path} has no {field!r} column (it has {pf.schema_arrow.names}): set --text_field")
    for batch in pf.iter_batches(batch_size=1024, columns=field and [field]):  # a batch at a time: bounded memory
        yield from (batch.to_pylist() if field is None else (t or "" for t in batch.column(0).to_pylist()))


def _hf_documents(dataset, field, config, split):
    for i, row in enumerate(_hf_rows(dataset, config, split)):
        if field not in row:
            raise InputError(f"{dataset} rows have no {field!r} field (they have {sorted(row)}): set --text_field")
        if row[field]:
            yield str(row.get("id", i)), row[field]  # a row id survives reordering; else its position


def _hf_rows(dataset, config, split):
    try:
        import datasets
    except ImportError:
        raise InputError(f"--source=hf:{dataset} needs the datasets package: pip install datasets")
    try:
        yield from datasets.load_dataset(dataset, config or None, split=split, streaming=True)
    except Exception as e:  # offline, a wrong name or config, a dropped connection mid-stream
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"cannot stream Hugging Face dataset {dataset!r} ({msg}): check the name, --hf_config and "
                         "the network (offline machines need a local copy: --source=path)")


# -----------------------------------------------------------------------------
# chat sources: (key, where, [(role, content)]) per conversation; the key decides the split as a document's does
CHAT_FORMATS = ("alpaca", "dolly", "oasst1", "messages")


def _records(src, hf_config="", hf_split="train", skipped=None):
    """(key, where, record) for the JSON objects of a .json list, .jsonl, .parquet, a folder of them, or hf:<dataset>."""
    skipped = [] if skipped is None else skipped
    if src.startswith("hf:"):
        for i, row in enumerate(_hf_rows(src[3:], hf_config, hf_split)):
            yield str(row.get("id", i)), f"{src} row {i}", row
        return
    if src == "stdlib_functions":
        yield from _stdlib_functions()
        return
    root, files = source_files(src, ".json .jsonl .parquet")
    for path in files:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        try:
            if path.endswith(".jsonl"):  # named by line number, the others by position
                rows = ((f"{path}:{n}", r) for n, r in _jsonl_records(path, skipped))
            elif path.endswith(".parquet"):
                rows = ((f"{path}[{i}]", r) for i, r in enumerate(_parquet_rows(path)))
            else:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                if not isinstance(data, list):
                    raise InputError(f"{path} holds a JSON {type(data).__name__}, not a list of records: give a "
                                     "list, or one record per line as .jsonl")
                rows = ((f"{path}[{i}]", r) for i, r in enumerate(data))
            yield from ((f"{rel}#{i}", where, r) for i, (where, r) in enumerate(rows))
        except InputError:
            raise
        except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
            skipped.append((path, type(e).__name__))


def _stdlib_functions(max_chars=600):
    """An instruction set built offline from this Python's standard library, as messages records: for each top-level
    function with a docstring and at most max_chars of source, the user asks for it by its signature and the
    docstring's first line, and the reply is its source."""
    root, files = source_files("stdlib")
    for file in files:
        try:
            src = open(file, encoding="utf-8").read()
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        rel = os.path.relpath(file, root).replace(os.sep, "/")
        for node in tree.body:
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            code = ast.get_source_segment(src, node) if doc and doc.strip() else None
            if code and len(code) <= max_chars:
                ask = f"Write a Python function {node.name}({ast.unparse(node.args)}): {doc.strip().splitlines()[0]}"
                yield f"{rel}#{node.name}", f"{file}:{node.lineno}", {
                    "messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": code}]}


def _field(rec, name, where, fmt, kind=str, default=None):
    if not isinstance(rec, dict):
        raise InputError(f"{where} is a JSON {type(rec).__name__}, not an object: fix the data")
    if rec.get(name) is None:
        if default is not None:
            return default
        raise InputError(f"{where} has no {name!r} field (it has {sorted(rec)}), which --chat_format={fmt} needs: "
                         f"set the right --chat_format ({', '.join(CHAT_FORMATS)}; --messages_field) or fix the data")
    if not isinstance(rec[name], kind):
        raise InputError(f"{where}: {name!r} is a {type(rec[name]).__name__}, not a {kind.__name__}: fix the data")
    return rec[name]


def _instruction(rec, where, fmt, extra, answer):  # alpaca and dolly: the extra text follows the instruction
    more = _field(rec, extra, where, fmt, default="")
    return [("user", _field(rec, "instruction", where, fmt) + ("\n\n" + more if more else "")),
            ("assistant", _field(rec, answer, where, fmt))]


def _rank(reply):  # sorts best first: rank 0, 1, ..., then unranked; min() keeps the first of equals
    rank = reply.get("rank") if isinstance(reply, dict) else None
    return (rank is None, rank or 0)


def _oasst1(rec, where, fmt):
    """The top-ranked path of an OpenAssistant tree: from the prompt, always the reply of the lowest rank (0 is
    best; unranked after ranked; ties keep the first), as Open-Instruct's oasst1 conversion does."""
    node, turns = _field(rec, "prompt", where, fmt, dict), []
    while node is not None:
        role = {"prompter": "user", "assistant": "assistant"}.get(_field(node, "role", where, fmt))
        if role is None:
            raise InputError(f"{where}: oasst1 role {node['role']!r} is not prompter or assistant: fix the data")
        turns.append((role, _field(node, "text", where, fmt)))
        node = min(_field(node, "replies", where, fmt, list, []), key=_rank, default=None)
    return turns[:-1] if turns[-1][0] == "user" else turns  # a question nobody answered teaches nothing


def _oasst1_trees(recs, fmt):
    """The flat message table of the Hugging Face OpenAssistant/oasst1 (message_id, parent_id, ...) -> one record
    per root in the trees JSONL's shape, keyed and named by its root message."""
    recs, nodes = list(recs), {}
    for _, where, r in recs:
        nodes[_field(r, "message_id", where, fmt)] = dict(r, replies=[])
    for _, _, r in recs:  # in table order, so ties between replies keep it
        if r.get("parent_id") in nodes:
            nodes[r["parent_id"]]["replies"].append(nodes[r["message_id"]])
    return [(key, where, {"prompt": nodes[r["message_id"]]}) for key, where, r in recs if r.get("parent_id") is None]


def chat_format_of(rec, messages_field="messages", where="the first record"):
    """The chat format a record's keys say it has."""
    keys = set(rec) if isinstance(rec, dict) else set()
    fmt = ("messages" if messages_field in keys else "alpaca" if {"instruction", "output"} <= keys else
           "dolly" if {"instruction", "response"} <= keys else "oasst1" if {"message_id", "parent_id"} <= keys or
           isinstance(rec, dict) and isinstance(rec.get("prompt"), dict) else None)
    if fmt is None:
        raise InputError(f"cannot tell the chat format of {where} from its keys {sorted(keys)}: set --chat_format to "
                         f"one of {', '.join(CHAT_FORMATS)} (and --messages_field for messages)")
    return fmt


def conversations(src, chat_format="auto", messages_field="messages", hf_config="", hf_split="train", skipped=None):
    """(format, iterator of (key, where, [(role, content)])) of a chat source; "auto" reads the first record's keys."""
    skipped = [] if skipped is None else skipped
    recs = _records(src, hf_config, hf_split, skipped)
    first = next(recs, None)
    if first is None and skipped:
        raise InputError(f"no records in {src}: {len(skipped)} input(s) unreadable or not JSON, the first "
                         f"{skipped[0][0]} ({skipped[0][1]}): fix or remove it")
    if first is None:
        raise InputError(f"no records in {src}: give a .json list, .jsonl or .parquet file or folder, or "
                         "hf:<dataset>")
    fmt = chat_format_of(first[2], messages_field, first[1]) if chat_format == "auto" else chat_format
    recs = itertools.chain([first], recs)
    if fmt == "oasst1" and isinstance(first[2], dict) and "prompt" not in first[2]:
        recs = _oasst1_trees(recs, fmt)
    convert = {"alpaca": lambda r, w: _instruction(r, w, fmt, "input", "output"),
               "dolly": lambda r, w: _instruction(r, w, fmt, "context", "response"),
               "oasst1": lambda r, w: _oasst1(r, w, fmt),
               "messages": lambda r, w: _field(r, messages_field, w, fmt, list)}[fmt]

    def checked(key, where, rec):
        conv = turns(convert(rec, where), where)
        if not any(role == "assistant" for role, _ in conv):
            raise InputError(f"{where} has no assistant turn, so nothing to train on: fix the data (or check "
                             f"--chat_format={fmt}, --messages_field={messages_field})")
        return key, where, conv
    return fmt, (checked(*r) for r in recs)


# -----------------------------------------------------------------------------
# tokenizer training


def _chunks(text, size=_CHUNK_CHARS):
    """Whole lines, newlines kept, in pieces of at most `size` characters (longer lines are cut), so the trainer
    learns pieces such as '):\\n' and no sentence exceeds its length limit."""
    buf = ""
    for line in text.splitlines(keepends=True):
        if buf and len(buf) + len(line) > size:
            yield buf
            buf = ""
        while len(line) > size:
            yield line[:size]
            line = line[size:]
        buf += line
    if buf:
        yield buf


def train_tokenizer(texts, path, vocab_size=8192, max_sentences=25_000, num_threads=1, skipped=()):
    """Train a SentencePiece BPE on an iterable of texts and write it to `path`. LLaMA's conventions (byte fallback,
    digits split, unk 0, bos 1, eos 2, no pad) except that text round-trips exactly: identity normalization, runs
    of spaces and whitespace-only pieces kept (indentation), no dummy space prefix."""
    import sentencepiece as spm
    sentences = list(itertools.islice((c for t in texts for c in _chunks(t)), max_sentences))
    if not sentences and skipped:  # filled while `texts` was read
        raise InputError(f"no text to train the tokenizer on: skipped as unreadable or not UTF-8 {skipped[0][0]} "
                         f"({skipped[0][1]}) and {len(skipped) - 1} more: give UTF-8 text, .jsonl or .parquet files")
    if not sentences:
        raise InputError("no text to train the tokenizer on: check the source (is the train split empty?)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=True, character_coverage=0.9999,
            max_sentence_length=4 * _CHUNK_CHARS, num_threads=num_threads, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size too high (8192). Please set it to a value <= 3021."
        low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if low:  # the 256 byte pieces, unk/bos/eos and every character of the text each take a piece
            raise InputError(f"vocab_size={vocab_size} is too small for this text: its characters and the 259 byte and "
                             f"special pieces need {low.group(2)}: use --vocab_size={low.group(2)} or more")
        raise InputError(f"SentencePiece training failed: {str(e).strip()}: adjust --vocab_size or give more text")
    atomic_write(path, model.getvalue())
    return len(sentences), sum(map(len, sentences))



# -----------------------------------------------------------------------------
# token files


class _SplitWriter:
    """Appends one split's token stream to <split>_NNN.bin shards of exactly shard_tokens tokens (the last one
    shorter), each written under a temporary name and renamed when full. A finished shard records where the next
    one starts in the document stream (document index, tokens of it already written) and the running document
    and byte counts, so a re-run restarts there without re-tokenizing what came before. The records are the
    manifest's own list for this split, saved each time a shard is finished."""

    def __init__(self, out_dir, split, shard_tokens, manifest):
        self.out_dir, self.split, self.shard_tokens, self.manifest = out_dir, split, shard_tokens, manifest
        self.done, self.f, self.n = manifest["splits"][split], None, 0
        last = self.done[-1] if self.done else {"next_doc": 0, "skip": 0, "documents": 0, "bytes": 0}
        self.next_doc, self.skip, self.documents, self.bytes = (last[k] for k in ("next_doc", "skip", "documents", "bytes"))

    def add(self, doc, ids, nbytes):
        offset = 0
        if doc == self.next_doc and self.skip:  # the tail of a document cut by the last finished shard
            offset, ids = self.skip, ids[self.skip:]
        else:
            self.documents, self.bytes = self.documents + 1, self.bytes + nbytes
        pos = 0
        while pos < len(ids):
            if self.f is None:
                self.f, self.n = open(self._path(len(self.done)) + ".tmp", "wb"), 0
            take = min(len(ids) - pos, self.shard_tokens - self.n)
            self.f.write(ids[pos:pos + take].tobytes())
            self.n, pos = self.n + take, pos + take
            if self.n == self.shard_tokens:
                self._close_shard(*((doc, offset + pos) if pos < len(ids) else (doc + 1, 0)))

    def _path(self, i):
        return os.path.join(self.out_dir, f"{self.split}_{i:03d}.bin")

    def _close_shard(self, next_doc, skip):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        path = self._path(len(self.done))
        os.replace(path + ".tmp", path)
        self.next_doc, self.skip, self.f = next_doc, skip, None
        self.done.append({"file": os.path.basename(path), "tokens": self.n, "next_doc": next_doc, "skip": skip,
                          "documents": self.documents, "bytes": self.bytes})
        write_json(os.path.join(self.out_dir, "manifest.json"), self.manifest)

    def finish(self, n_docs):
        if self.f is not None:
            self._close_shard(n_docs, 0)  # the stream has ended: a resumed run would skip every document
        if len(self.done) == 1:  # a split that fits one shard is plain <split>.bin
            os.replace(os.path.join(self.out_dir, self.done[0]["file"]), os.path.join(self.out_dir, f"{self.split}.bin"))
            self.done[0]["file"] = f"{self.split}.bin"
        return {"files": [d["file"] for d in self.done], "tokens": sum(d["tokens"] for d in self.done),
                "documents": self.documents, "bytes": self.bytes}




def _clear(out_dir, fingerprint):
    """Remove what an earlier run left (only names this script writes) and return a fresh manifest."""
    for f in os.listdir(out_dir):
        if re.fullmatch(r"(train|val|test)(_\d+)?(\.mask)?\.bin(\.tmp)?|meta\.json|manifest\.json", f):
            os.remove(os.path.join(out_dir, f))
    return {"settings": fingerprint, "complete": False, "splits": {k: [] for k in _SPLITS}}


def _init_worker(tok, dt, pool=False):
    global _tok, _dtype
    _tok, _dtype = tok, dt
    if pool:  # Ctrl-C reaches the whole process group: the main process alone handles it (one line, no tracebacks)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_batch(texts):
    return [(np.array(_tok.encode(t, bos=True, eos=True), dtype=_dtype), len(t.encode("utf-8"))) for t in texts]


def _rows(convs, seq_len, packing="padded", pad_id=0, dtype="uint16"):
    """[(ids, mask)] conversations of at most seq_len tokens -> (tokens, mask) arrays (rows, seq_len), padded with
    pad_id (mask 0). "padded": a conversation per row; "packed": whole conversations in order while they fit."""
    row, col, place = -1, seq_len, []  # place: (row, column) of each conversation
    for ids, _ in convs:
        if packing == "padded" or col + len(ids) > seq_len:
            row, col = row + 1, 0
        place.append((row, col))
        col += len(ids)
    tokens, trained = np.full((row + 1, seq_len), pad_id, dtype), np.zeros((row + 1, seq_len), np.uint8)
    for (r, c), (ids, mask) in zip(place, convs):
        tokens[r, c:c + len(ids)], trained[r, c:c + len(ids)] = ids, mask
    return tokens, trained




# -----------------------------------------------------------------------------
# the pipeline


def default_name(src, hf_config=""):
    if src.startswith("hf:"):
        return src[3:].rstrip("/").split("/")[-1] + (f"-{hf_config}" if hf_config else "")
    return os.path.splitext(os.path.basename(os.path.normpath(src)))[0]


def _install_tokenizer(out_dir, tok, train_texts, s, keep=False):
    """The data folder's tokenizer: a tokenizer file copied in (a SentencePiece model, or a tokenizer.json with its
    tokenizer_config.json), tiktoken recorded by name (in meta.json), or a BPE trained on train_texts(skipped) (the train
    split only); keep: reuse the one an interrupted run trained."""
    if tok is not None and tok.kind == "tiktoken":
        return tok
    if tok is not None:
        for f in tok.files:
            dst = os.path.join(out_dir, os.path.basename(f))
            if not (os.path.isfile(dst) and os.path.samefile(f, dst)):
                atomic_write(dst, lambda tmp, f=f: shutil.copyfile(f, tmp))
        return Tokenizer(os.path.join(out_dir, os.path.basename(tok.name)))
    model_path = os.path.join(out_dir, "tokenizer.model")
    if not (keep and os.path.isfile(model_path)):
        t0 = time.time()
        print(f"training a {s['vocab_size']}-piece SentencePiece BPE on the train split of {s['source']} ...")
        skipped = []
        n, chars = train_tokenizer(train_texts(skipped), model_path, s["vocab_size"], s["tokenizer_sentences"],
                                   s["num_proc"], skipped)
        print(f"tokenizer trained on {n:,} chunks ({chars / 1e6:.1f}M characters) in {time.time() - t0:.1f}s")
    return Tokenizer(model_path)


def _settings(overrides):
    """The module settings with keyword overrides, checked before any work."""
    s = {k: overrides.pop(k, globals()[k]) for k in _SETTINGS}
    if overrides:
        raise TypeError(f"unknown settings {sorted(overrides)}")
    fractions = (s["val_fraction"], s["test_fraction"])
    if min(fractions) < 0 or sum(fractions) >= 1:
        raise InputError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    if s["shard_tokens"] < 1 or s["num_proc"] < 1:
        raise InputError("shard_tokens and num_proc must be at least 1")
    if s["max_documents"] < 0:
        raise InputError(f"max_documents={s['max_documents']} must be at least 0 (0 = all)")
    if s["name"] and (s["name"] != os.path.basename(s["name"]) or s["name"] in (".", "..")):
        raise InputError(f"name={s['name']!r} is the data folder's name under data_root, not a path: give a plain "
                         "name such as --name=mycode (or --data_root for where it goes)")
    token_dtype(0, s["dtype"])
    src, chat = s["source"], s["chat_format"]
    if chat:
        for key, allowed in (("chat_format", ("auto",) + CHAT_FORMATS), ("packing", ("padded", "packed")),
                             ("overlong", ("error", "drop", "truncate"))):
            if s[key] not in allowed:
                raise InputError(f"{key}={s[key]!r}: use one of {', '.join(allowed)}")
        if s["text_field"] != "text":  # the default
            raise InputError(f"text_field={s['text_field']!r} names the text column of plain-text sources; "
                             "conversations are read from --messages_field or the chat format's own fields")
        if src == "stdlib":
            raise InputError("--source=stdlib is plain text, not conversations: give .json, .jsonl or .parquet "
                             "records (or a folder of them), stdlib_functions or hf:<dataset>, or drop --chat_format")
        if s["seq_len"] < 2:
            raise InputError(f"seq_len={s['seq_len']}: a chat row needs at least 2 tokens")
    elif src == "stdlib_functions":
        raise InputError("--source=stdlib_functions is an instruction set: add --chat_format=messages")
    elif src.endswith(".json") and os.path.isfile(src):  # read as text it would train on the JSON's punctuation
        raise InputError(f"--source={src} is a JSON file: for instruction or chat records add --chat_format=auto; "
                         "for text, give .jsonl lines with a text field")
    if not src.startswith("hf:") and src != "stdlib_functions":
        source_files(src, ".json .jsonl .parquet" if chat else s["extensions"])  # a missing path fails here, early
    return s


def _documents(s, skipped=None):
    return itertools.islice(documents(s["source"], s["text_field"], s["extensions"], s["doc_separator"],
                                      s["hf_config"], s["hf_split"], skipped), s["max_documents"] or None)


def _train_texts(s, skipped=None):
    return (text for key, text in _documents(s, skipped) if split_of(key, s["val_fraction"], s["test_fraction"]) == "train")


def _tokenizer_id(tok):
    return tok.spec if tok.kind == "tiktoken" else hashlib.sha256(open(tok.name, "rb").read()).hexdigest()


def _manifest(out_dir, s, tok):
    """(manifest, resume): what a previous run with the same settings finished, or a fresh start. Finished data
    (a meta.json) made with other settings or another tokenizer file is refused unless replace: runs and
    checkpoints read it, and this run could still fail before it has made anything in its place."""
    fingerprint = {k: v for k, v in s.items() if k not in ("name", "data_root", "num_proc", "replace")}
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        manifest = {}
    if os.path.isfile(os.path.join(out_dir, "meta.json")):
        old = manifest.get("settings") or {}
        changed = [f"{k}={old.get(k)!r} -> {v!r}" for k, v in fingerprint.items() if old.get(k) != v]
        if tok is not None and manifest.get("tokenizer") not in (None, _tokenizer_id(tok)):
            changed.append(f"the contents of {s['tokenizer']}")
        if changed or not manifest:
            how = f"other settings ({', '.join(changed)})" if manifest else "no manifest.json (by hand, or an older prepare.py)"
            if not s["replace"]:
                raise InputError(f"{out_dir} already holds data prepared with {how}: give another --name, or "
                                 "--replace=True to prepare it again in its place")
            print(f"{out_dir}: replacing data prepared with {how}")
            manifest = {}  # nothing of it resumes
    resume = manifest.get("settings") == fingerprint and all(
        os.path.isfile(os.path.join(out_dir, d["file"])) for ds in manifest["splits"].values() for d in ds)
    if not resume:  # new, an interrupted run with other settings, or a lost shard: start over
        if manifest:
            print(f"{out_dir}: settings or files changed since the last run, starting over")
        manifest = _clear(out_dir, fingerprint)
    return manifest, resume


def _encode(batch, pool, num_proc, writers):
    """Tokenize a batch of (document index, split, text) across the pool, in order into the writers; returns
    the number of tokens."""
    texts, n_parts = [t for _, _, t in batch], 4 * num_proc
    parts = [texts[i::n_parts] for i in range(n_parts)]  # strided, so long documents spread over processes
    encoded = pool.map(_encode_batch, parts) if pool else [_encode_batch(p) for p in parts]
    tokens = 0
    for j, (doc, split, _) in enumerate(batch):
        ids, nbytes = encoded[j % n_parts][j // n_parts]
        writers[split].add(doc, ids, nbytes)
        tokens += len(ids)
    return tokens


def _tokenize(out_dir, s, tok, dt, manifest):
    """Documents stream through in order, each to its split's writer; shards a previous run finished are skipped.
    Returns (split -> finished writer, documents seen, skipped inputs, tokens written now)."""
    from tqdm import tqdm
    writers = {k: _SplitWriter(out_dir, k, s["shard_tokens"], manifest) for k in _SPLITS}
    files = [] if s["source"].startswith("hf:") else source_files(s["source"], s["extensions"])[1]
    known = files and not s["doc_separator"] and not any(f.endswith((".jsonl", ".parquet")) for f in files)
    bar = tqdm(total=len(files) if known else None, unit="doc", desc=f"tokenizing ({s['num_proc']} proc)")
    skipped, batch, chars, tokens, n_seen = [], [], 0, 0, 0
    pool = Pool(s["num_proc"], _init_worker, (tok, dt, True)) if s["num_proc"] > 1 else None
    _init_worker(tok, dt)
    try:
        for i, (key, text) in enumerate(_documents(s, skipped)):
            bar.update(1)
            n_seen, split = i + 1, split_of(key, s["val_fraction"], s["test_fraction"])
            if i < writers[split].next_doc:
                continue  # already in a finished shard
            batch.append((i, split, text))
            chars += len(text)
            if chars >= _BATCH_CHARS * s["num_proc"]:
                tokens += _encode(batch, pool, s["num_proc"], writers)
                bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
                batch, chars = [], 0
        tokens += _encode(batch, pool, s["num_proc"], writers)
        bar.total = bar.n if bar.total else None  # empty and skipped files never came through as documents
    finally:
        bar.close()
        if pool:
            pool.terminate()
    return writers, n_seen, skipped, tokens


def prepare_data(out_dir, **overrides):
    """Prepare one data folder; keyword arguments override the module settings. Returns meta.json's dict."""
    s = _settings(overrides)
    tok = Tokenizer(s["tokenizer"]) if s["tokenizer"] else None  # a missing file or an offline tiktoken fails here
    os.makedirs(out_dir, exist_ok=True)
    if s["chat_format"]:
        return _prepare_chat(out_dir, s, tok)
    manifest, resume = _manifest(out_dir, s, tok)
    tok = _install_tokenizer(out_dir, tok, lambda skipped: _train_texts(s, skipped), s, keep=resume)
    tok_id = _tokenizer_id(tok)
    if manifest.get("tokenizer") not in (None, tok_id):  # token files made with another tokenizer are useless
        print(f"{out_dir}: the tokenizer changed since the last run, starting over")
        manifest = _clear(out_dir, manifest["settings"])
    manifest["tokenizer"] = tok_id
    dt = token_dtype(tok.vocab_size, s["dtype"])
    if manifest["complete"]:
        print(f"{out_dir} is up to date (delete the folder to prepare it again)")
        return read_meta(out_dir)
    write_json(os.path.join(out_dir, "manifest.json"), manifest)

    t0 = time.time()
    writers, n_seen, skipped, tokens = _tokenize(out_dir, s, tok, dt, manifest)
    seconds = time.time() - t0
    if sum(w.documents for w in writers.values()) == 0:
        raise InputError(f"no documents in {s['source']} ({len(skipped)} inputs skipped as unreadable or not UTF-8): "
                         "check the path, --extensions and --text_field")
    splits = {k: w.finish(n_seen) for k, w in writers.items()}
    meta = write_meta(out_dir, splits, tok, dt, s["source"])
    manifest["complete"] = True
    write_json(os.path.join(out_dir, "manifest.json"), manifest)

    for k in ("val", "test"):
        if not splits[k]["documents"] and s[f"{k}_fraction"] > 0:
            print(f"warning: the {k} split is empty: raise --{k}_fraction or add documents")
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable or non-UTF-8 inputs, first {skipped[0][0]} ({skipped[0][1]})")
    total = {f: sum(v[f] for v in splits.values()) for f in ("documents", "tokens", "bytes")}
    per_split = " / ".join(f"{splits[k]['tokens']:,}" for k in _SPLITS)
    n_files = sum(len(v["files"]) for v in splits.values())
    print(f"{out_dir}: {total['documents']:,} documents, {total['bytes'] / 1e6:.1f} MB, {total['tokens']:,} tokens "
          f"(train/val/test {per_split}); tokenized {tokens:,} in {seconds:.1f}s ({tokens / max(seconds, 1e-9):,.0f} "
          f"tokens/s); {n_files} token files")
    return meta


def _conversations(s, skipped=None):
    fmt, it = conversations(s["source"], s["chat_format"], s["messages_field"], s["hf_config"], s["hf_split"], skipped)
    return fmt, itertools.islice(it, s["max_documents"] or None)


def _chat_train_texts(s, skipped=None):
    return (chat_text(conv, eos="") for key, _, conv in _conversations(s, skipped)[1]
            if split_of(key, s["val_fraction"], s["test_fraction"]) == "train")


def _prepare_chat(out_dir, s, tok):
    """Conversations -> <split>.bin rows of seq_len tokens + <split>.mask.bin. Chat sets fit in memory (Tulu v2's
    ~0.4B tokens as ~3 bytes a token): everything is held, then written in one go, each file under a temporary name
    (an interrupted run starts again; a finished one is up to date)."""
    src, fractions, T, skipped = s["source"], (s["val_fraction"], s["test_fraction"]), s["seq_len"], []
    manifest, done = _manifest(out_dir, s, tok)  # else cleared: no stale meta.json over half-written files
    if done:
        print(f"{out_dir} is up to date (delete the folder to prepare it again)")
        return read_meta(out_dir)
    tok = _install_tokenizer(out_dir, tok, lambda skipped: _chat_train_texts(s, skipped), s)
    dt, pad = token_dtype(tok.vocab_size, s["dtype"]), tok.eos_id if tok.pad_id is None else tok.pad_id

    from tqdm import tqdm
    fmt, it = _conversations(s, skipped)
    kept = {k: [] for k in _SPLITS}
    count = {k: {"dropped": 0, "truncated": 0} for k in _SPLITS}
    with tqdm(it, unit="conv", desc="tokenizing", leave=False, disable=None) as bar:  # a terminal only; erased on error
        for key, where, conv in bar:
            split = split_of(key, *fractions)
            ids, mask = encode_chat(tok, conv, where=where)
            if len(ids) > T:
                if s["overlong"] == "error":
                    raise InputError(f"{where} is {len(ids):,} tokens, more than seq_len={T}: raise --seq_len, or "
                                     "--overlong=drop to skip such conversations, or --overlong=truncate to cut "
                                     "them")
                if s["overlong"] == "drop" or not any(mask[:T]):  # cut before its first reply: nothing left to learn
                    count[split]["dropped"] += 1
                    continue
                ids, mask = ids[:T], mask[:T]
                count[split]["truncated"] += 1
            kept[split].append((np.array(ids, dt), np.array(mask, np.uint8)))  # ~3 bytes a token, not ~40
    if not any(kept.values()):
        dropped = sum(c["dropped"] for c in count.values())
        raise InputError(f"no conversations left in {src} ({dropped} dropped as longer than seq_len={T}"
                         + (", cut before their first reply" if s["overlong"] == "truncate" else "") + "): raise --seq_len"
                         + ("" if s["overlong"] == "truncate" else " or use --overlong=truncate"))

    splits = {}
    for k in _SPLITS:
        tokens, mask = _rows(kept[k], T, s["packing"], pad, dt)
        files = [f"{k}.bin", f"{k}.mask.bin"] if len(tokens) else []  # numpy cannot memory-map an empty file
        for f, a in zip(files, (tokens, mask)):
            atomic_write(os.path.join(out_dir, f), a.tobytes())
        splits[k] = {"files": files[:1], "mask_files": files[1:], "documents": len(kept[k]), "rows": len(tokens),
                     "tokens": sum(len(ids) for ids, _ in kept[k]), "trained_tokens": int(mask.sum()), **count[k]}
    meta = write_meta(out_dir, splits, tok, dt, src, layout="rows", seq_len=T, packing=s["packing"], chat_format=fmt)
    manifest.update(complete=True, tokenizer=_tokenizer_id(tok),
                    splits={k: [{"file": f} for f in v["files"] + v["mask_files"]] for k, v in splits.items()})
    write_json(os.path.join(out_dir, "manifest.json"), manifest)

    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable or non-JSON inputs, first {skipped[0][0]} ({skipped[0][1]})")
    total = {f: sum(v[f] for v in splits.values()) for f in splits["train"] if f not in ("files", "mask_files")}
    print(f"{out_dir}: {total['documents']:,} {fmt} conversations in {total['rows']:,} {s['packing']} rows of {T} "
          f"(train/val/test {' / '.join(str(splits[k]['rows']) for k in _SPLITS)}), {total['tokens']:,} tokens "
          f"({total['tokens'] / max(total['rows'] * T, 1):.0%} of the rows), {total['trained_tokens']:,} trained; "
          f"{total['dropped']} dropped, {total['truncated']} truncated as longer than seq_len")
    return meta



def main(argv):
    configurator.configure(globals(), argv)
    out_dir = os.path.join(data_root, name or default_name(source, hf_config))
    with sole_writer(out_dir, "data_root/name", discard_refused=True):
        return prepare_data(out_dir)


if __name__ == "__main__":
    configurator.main(main, sys.argv[1:])
