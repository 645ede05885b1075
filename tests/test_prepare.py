# prepare.py: tokenizers, the by-file split, token files, shards and resume, and bad input. Small corpora only:
# the whole stdlib is never tokenized here.
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data as data_lib  # noqa: E402
import prepare as P  # noqa: E402
import tokenizer as tz  # noqa: E402
from configurator import InputError  # noqa: E402

STDLIB_FILES = ["bisect.py", "colorsys.py", "copy.py", "fnmatch.py", "glob.py", "heapq.py", "keyword.py",
                "queue.py", "sched.py", "shlex.py", "string.py", "textwrap.py", "token.py", "tty.py"]
TRICKY = ("class Foo:\n\tdef bar(self,  x):\n\t\treturn  x   +\t1   \n\n\n    # four spaces\n        deeper = [\n"
          "            1,  2,\n        ]\n\r\nwindows line\r\n\x0c\nnon-ASCII: é ß 漢字 🙂\n  trailing  \n")


def _synthetic(i):
    # deterministic Python-like text with indentation, tabs, blank lines and runs of spaces
    body = "".join(f"    {'    ' * (j % 3)}value_{i}_{j} = {j} *  ({i} + {j})\n" + ("\n" if j % 4 == 0 else "")
                   for j in range(40 + i % 17))
    return f"def function_{i}(a,\tb):\n{body}    return  None\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~40 files of code: real stdlib modules plus generated ones, one in a sub-folder, and files that a walk skips."""
    d = tmp_path_factory.mktemp("corpus")
    for f in STDLIB_FILES:
        shutil.copy(os.path.join(P.stdlib_root(), f), d / f)
    (d / "pkg").mkdir()
    for i in range(26):
        (d / ("pkg" if i % 5 == 0 else ".") / f"mod_{i:02d}.py").write_text(_synthetic(i))
    (d / "notes.txt").write_text(TRICKY, newline="")
    (d / "empty.py").write_text("")  # empty documents are dropped
    for skipped_dir in (".git", "__pycache__"):
        (d / skipped_dir).mkdir()
        (d / skipped_dir / "junk.py").write_text("junk = 1\n")
    (d / "data.bin").write_bytes(b"\x00\x01")  # not in `extensions`
    return d


@pytest.fixture(scope="module")
def sp_model(corpus, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
    texts = [open(f, encoding="utf-8", newline="").read() for f in P.source_files(str(corpus))[1]]
    P.train_tokenizer(texts, path, vocab_size=500, num_threads=1)
    return path


@pytest.fixture(scope="module")
def prepared(corpus, sp_model, tmp_path_factory):
    """The corpus prepared once with the fixed tokenizer, unsharded: the reference for several tests."""
    out = str(tmp_path_factory.mktemp("data") / "ref")
    P.prepare_data(out, source=str(corpus), tokenizer=sp_model, val_fraction=0.2, test_fraction=0.2, num_proc=1)
    return out


def _run(out, corpus, **kw):
    kw = {"source": str(corpus), "val_fraction": 0.2, "test_fraction": 0.2, "num_proc": 1, **kw}
    return P.prepare_data(str(out), **kw)


def _bytes(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d)) if f != "manifest.json"}


def _docs(ids, bos, eos):
    """Split a token stream into documents at BOS; every document must end with EOS."""
    starts = np.flatnonzero(ids == bos)
    assert len(ids) == 0 or starts[0] == 0
    docs = [ids[a:b] for a, b in zip(starts, list(starts[1:]) + [len(ids)])]
    assert all(d[-1] == eos and eos not in d[1:-1] and bos not in d[1:] for d in docs)
    return [d[1:-1] for d in docs]


def test_sentencepiece_round_trip_keeps_code_layout(sp_model):
    tok = tz.Tokenizer(sp_model)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == ("sentencepiece", 500, 1, 2, None)
    code = _synthetic(99) + TRICKY
    ids = tok.encode(code)
    assert tok.decode(ids) == code
    assert tok.decode(np.array(ids, dtype=np.uint16)) == code  # numpy ids, as read back from a token file
    assert tok.encode(code, bos=True, eos=True) == [1] + ids + [2]
    assert tok.decode(tok.encode(code, bos=True, eos=True)) == code
    real = open(os.path.join(P.stdlib_root(), "textwrap.py"), encoding="utf-8").read()
    assert len(tok.encode(real)) < 0.7 * len(real.encode("utf-8"))  # merges, not one piece per character
    pieces = [tok._sp.id_to_piece(i) for i in range(tok.vocab_size)]
    assert "▁▁▁▁" in pieces  # indentation is a piece of its own (whitespace-only pieces allowed)
    assert any("\n" in p and p != "<0x0A>" for p in pieces)  # newlines are learned inside pieces
    for s in ["", " ", "\n", "\t\t", "   x", "x   ", "\n\n\n", "a\r\nb"]:
        assert tok.decode(tok.encode(s)) == s
    assert tz.Tokenizer(os.path.dirname(sp_model)).vocab_size == 500  # a folder holding tokenizer.model works too
    assert pickle.loads(pickle.dumps(tok)).encode(code) == ids


def test_split_is_sha256_of_the_path_not_pythons_hash():
    # golden values: a salted hash() or a different hash would move these between runs or machines
    expect = {"json/decoder.py": "val", "re/__init__.py": "val", "random.py": "test", "string.py": "test",
              "os.py": "train", "typing.py": "train"}
    assert {k: P.split_of(k, 0.3, 0.3) for k in expect} == expect
    keys = [f"dir/file_{i}.py" for i in range(20000)]
    share = {s: sum(P.split_of(k, 0.05, 0.1) == s for k in keys) / len(keys) for s in P._SPLITS}
    assert abs(share["val"] - 0.05) < 0.01 and abs(share["test"] - 0.1) < 0.01


def test_stdlib_corpus_and_its_split():
    root, files = P.source_files("stdlib")
    keys = [os.path.relpath(f, root).replace(os.sep, "/") for f in files]
    assert "os.py" in keys and "json/decoder.py" in keys and len(keys) > 500
    assert not any("site-packages" in k or "__pycache__" in k for k in keys)
    assert P.source_files("stdlib")[1] == files  # a fixed order
    splits = [P.split_of(k) for k in keys]
    for s in ("val", "test"):  # small held-out sets, but not empty
        assert 0.002 < splits.count(s) / len(keys) < 0.03


def test_prepare_layout_splits_and_bos_eos(prepared, corpus, sp_model):
    meta = data_lib.read_meta(prepared)
    assert list(meta) == ["tokenizer", "tokenizer_file", "tokenizer_files", "tiktoken_encoding", "vocab_size", "dtype", "bos_id",
                          "eos_id", "pad_id", "source", "splits", "layout"]
    assert meta["layout"] == "stream"
    assert (meta["tokenizer"], meta["tokenizer_file"], meta["tiktoken_encoding"]) == ("sentencepiece", "tokenizer.model", None)
    assert (meta["vocab_size"], meta["dtype"], meta["bos_id"], meta["eos_id"], meta["pad_id"]) == (500, "uint16", 1, 2, None)
    assert open(os.path.join(prepared, "tokenizer.model"), "rb").read() == open(sp_model, "rb").read()
    tok = data_lib.load_tokenizer(prepared)
    root, files = P.source_files(str(corpus))
    texts = {os.path.relpath(f, root).replace(os.sep, "/"): open(f, encoding="utf-8", newline="").read() for f in files}
    assert "pkg/mod_00.py" in texts and not any(k.startswith((".git", "__pycache__")) or k.endswith(".bin") for k in texts)
    seen = []
    for s in P._SPLITS:
        info = meta["splits"][s]
        assert info["files"] == [f"{s}.bin"]
        (arr,) = data_lib.open_split(prepared, s)
        assert arr.dtype == np.uint16 and len(arr) == info["tokens"]
        want = [t for k, t in texts.items() if t and P.split_of(k, 0.2, 0.2) == s]  # sorted walk order
        got = [tok.decode(d) for d in _docs(np.asarray(arr), 1, 2)]
        assert got == want and len(want) > 2  # every split non-empty for this corpus
        assert info["documents"] == len(want) and info["bytes"] == sum(len(t.encode("utf-8")) for t in want)
        seen += got
    assert len(seen) == len(set(seen)) == sum(1 for t in texts.values() if t)  # disjoint and complete


def test_prepare_twice_is_byte_identical_and_process_count_free(corpus, tmp_path):
    # each run trains its own tokenizer: the trainer must be deterministic too
    for run, procs in (("a", 2), ("b", 2), ("c", 1)):
        _run(tmp_path / run, corpus, vocab_size=400, num_proc=procs)
    a, b, c = (_bytes(tmp_path / run) for run in "abc")
    assert sorted(a) == ["meta.json", "test.bin", "tokenizer.model", "train.bin", "val.bin"]
    assert a == b
    # one process or two: the same tokens (the model file records the trainer's thread count, nothing else differs)
    assert {f: v for f, v in a.items() if f != "tokenizer.model"} == {f: v for f, v in c.items() if f != "tokenizer.model"}
    pieces = [[t._sp.id_to_piece(i) for i in range(t.vocab_size)] for t in map(data_lib.load_tokenizer, (tmp_path / "a", tmp_path / "c"))]
    assert pieces[0] == pieces[1]


def test_shards_concatenate_to_the_unsharded_files(prepared, corpus, sp_model, tmp_path):
    meta = _run(tmp_path / "sh", corpus, tokenizer=sp_model, shard_tokens=3000)
    ref = data_lib.read_meta(prepared)
    assert len(meta["splits"]["train"]["files"]) > 5
    for s in P._SPLITS:
        files = meta["splits"][s]["files"]
        n = -(-ref["splits"][s]["tokens"] // 3000)
        assert files == ([f"{s}_{i:03d}.bin" for i in range(n)] if n > 1 else [f"{s}.bin"])
        shards = data_lib.open_split(tmp_path / "sh", s)
        assert all(len(x) == 3000 for x in shards[:-1]) and 0 < len(shards[-1]) <= 3000
        assert np.array_equal(np.concatenate(shards), data_lib.open_split(prepared, s)[0])
        assert {k: v for k, v in meta["splits"][s].items() if k != "files"} == \
               {k: v for k, v in ref["splits"][s].items() if k != "files"}


def test_rerun_resumes_after_the_last_finished_shard(prepared, corpus, sp_model, tmp_path, monkeypatch):
    out, kw = tmp_path / "r", dict(tokenizer=sp_model, shard_tokens=2500)
    calls = {"close": 0, "encode": 0}
    close, encode = P._SplitWriter._close_shard, tz.Tokenizer.encode

    def close_then_crash(self, *a):
        close(self, *a)
        calls["close"] += 1
        if calls["close"] % 3 == 0:
            raise KeyboardInterrupt  # as if the run were stopped here

    monkeypatch.setattr(P._SplitWriter, "_close_shard", close_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _run(out, corpus, **kw)
    monkeypatch.setattr(P._SplitWriter, "_close_shard", close)
    manifest = json.load(open(out / "manifest.json"))
    finished = [d["file"] for ds in manifest["splits"].values() for d in ds]
    assert len(finished) == 3 and not manifest["complete"] and not (out / "meta.json").exists()
    assert any(d["skip"] > 0 for ds in manifest["splits"].values() for d in ds)  # a shard ended inside a document
    mtimes = {f: os.stat(out / f).st_mtime_ns for f in finished}

    def counting_encode(self, *a, **k):
        calls["encode"] += 1
        return encode(self, *a, **k)

    monkeypatch.setattr(tz.Tokenizer, "encode", counting_encode)
    meta = _run(out, corpus, **kw)
    n_docs = sum(v["documents"] for v in meta["splits"].values())
    assert 0 < calls["encode"] < n_docs  # documents wholly in finished shards were not tokenized again
    assert {f: os.stat(out / f).st_mtime_ns for f in finished} == mtimes  # finished shards untouched
    for s in P._SPLITS:
        assert np.array_equal(np.concatenate(data_lib.open_split(out, s)), data_lib.open_split(prepared, s)[0])
        assert meta["splits"][s]["documents"] == data_lib.read_meta(prepared)["splits"][s]["documents"]
    calls["encode"] = 0
    assert _run(out, corpus, **kw) == meta and calls["encode"] == 0  # complete: nothing redone

    # stopped every 3 shards until done: resumed documents that span several shards resume right again
    out2, runs = tmp_path / "r2", 0
    monkeypatch.setattr(P._SplitWriter, "_close_shard", close_then_crash)
    while True:
        runs += 1
        try:
            meta2 = _run(out2, corpus, **kw)
            break
        except KeyboardInterrupt:
            pass
    monkeypatch.setattr(P._SplitWriter, "_close_shard", close)
    assert runs > 5 and meta2 == meta
    for s in P._SPLITS:
        assert np.array_equal(np.concatenate(data_lib.open_split(out2, s)), data_lib.open_split(prepared, s)[0])
    # finished data is never replaced by a run with other settings (which could still fail): refused, untouched
    before = _bytes(out)
    with pytest.raises(InputError, match=r"r already holds data prepared with other settings \(shard_tokens=2500 -> "
                                         r"1000000000\): give another --name, or --replace=True to prepare it again in its place$"):
        _run(out, corpus, tokenizer=sp_model, shard_tokens=10**9)
    assert _bytes(out) == before
    # an interrupted run with other settings starts over and leaves no stale shards behind
    out3 = tmp_path / "r3"
    monkeypatch.setattr(P._SplitWriter, "_close_shard", close_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _run(out3, corpus, **kw)
    monkeypatch.setattr(P._SplitWriter, "_close_shard", close)
    assert len([f for f in os.listdir(out3) if f.endswith(".bin")]) >= 1 and not (out3 / "meta.json").exists()
    _run(out3, corpus, tokenizer=sp_model, shard_tokens=10**9)
    assert sorted(f for f in os.listdir(out3) if f.endswith(".bin")) == ["test.bin", "train.bin", "val.bin"]


def test_finished_data_is_not_replaced_by_another_tokenizer_or_an_unknown_run(corpus, sp_model, tmp_path):
    """A tokenizer file whose contents changed under the same path, or a folder with data but no manifest, is
    refused before anything is written (a trained tokenizer would otherwise replace the folder's own)."""
    tok = tmp_path / "tok.model"
    shutil.copy(sp_model, tok)
    out = tmp_path / "d"
    _run(out, corpus, tokenizer=str(tok))
    before = _bytes(out)
    P.train_tokenizer([_synthetic(i) for i in range(30)], str(tok), vocab_size=300, num_threads=1)
    with pytest.raises(InputError, match=r"with other settings \(the contents of .*tok.model\)"):
        _run(out, corpus, tokenizer=str(tok))
    assert _bytes(out) == before
    os.remove(out / "manifest.json")
    with pytest.raises(InputError, match=r"no manifest.json \(by hand, or an older prepare.py\): give another --name, "
                                         r"or --replace=True to prepare it again in its place$"):
        _run(out, corpus, tokenizer=str(tok))
    assert _bytes(out) == before
    # asked for: prepared again in its place, with the new tokenizer (bench.py finetune's own folder does this);
    # then up to date, with nothing tokenized again
    meta = _run(out, corpus, tokenizer=str(tok), replace=True)
    assert tz.same_tokenizer(data_lib.load_tokenizer(out), tz.Tokenizer(str(tok))) and _bytes(out) != before
    assert _run(out, corpus, tokenizer=str(tok), replace=True) == meta


class _FakeTiktoken:
    """An in-memory tiktoken encoding (tiktoken downloads real ones): bytes 0-255 plus <|endoftext|> = 69999."""

    @staticmethod
    def install(monkeypatch):
        import tiktoken
        enc = tiktoken.Encoding(name="fake", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                                special_tokens={"<|endoftext|>": 69999})
        monkeypatch.setattr(tiktoken, "list_encoding_names", lambda: ["fake"])
        monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)


def test_token_dtype_follows_vocab_size(corpus, tmp_path, monkeypatch):
    assert data_lib.token_dtype(65536) == "uint16" and data_lib.token_dtype(65537) == "uint32"
    assert data_lib.token_dtype(500, "uint32") == "uint32"
    with pytest.raises(InputError, match="does not fit uint16.*--dtype=auto"):
        data_lib.token_dtype(70000, "uint16")
    with pytest.raises(InputError, match="dtype='int8'"):
        data_lib.token_dtype(500, "int8")
    _FakeTiktoken.install(monkeypatch)
    meta = _run(tmp_path / "tt", corpus, tokenizer="tiktoken:fake")
    assert (meta["tokenizer"], meta["tokenizer_file"], meta["tiktoken_encoding"]) == ("tiktoken", None, "fake")
    assert (meta["vocab_size"], meta["dtype"], meta["bos_id"], meta["eos_id"]) == (70000, "uint32", 69999, 69999)
    assert not (tmp_path / "tt" / "tokenizer.model").exists()
    (arr,) = data_lib.open_split(tmp_path / "tt", "val")
    assert arr.dtype == np.uint32 and os.path.getsize(tmp_path / "tt" / "val.bin") == 4 * len(arr)
    ids = np.asarray(arr)
    eot = np.flatnonzero(ids == 69999)  # bos == eos: every document is <eot> text <eot>
    starts, ends = eot[::2], eot[1::2]
    assert len(eot) == 2 * meta["splits"]["val"]["documents"] and starts[0] == 0 and ends[-1] == len(ids) - 1
    assert np.array_equal(starts[1:], ends[:-1] + 1)
    tok = data_lib.load_tokenizer(tmp_path / "tt")
    texts = [tok.decode(ids[a + 1:b]) for a, b in zip(starts, ends)]
    assert sum(len(t.encode("utf-8")) for t in texts) == meta["splits"]["val"]["bytes"]
    assert [tok.encode(t) for t in texts] == [ids[a + 1:b].tolist() for a, b in zip(starts, ends)]
    with pytest.raises(InputError, match="does not fit uint16"):
        _run(tmp_path / "tt16", corpus, tokenizer="tiktoken:fake", dtype="uint16")


def test_jsonl_parquet_and_separated_text_sources(sp_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    d = tmp_path / "mixed"
    d.mkdir()
    rows = [f"row {i}:\n    indented  text {i}" for i in range(30)]
    with open(d / "a.jsonl", "w") as f:
        for i, r in enumerate(rows[:10]):
            f.write(json.dumps({"content": r, "n": i}) + "\n" + ("\n" if i == 3 else ""))
        f.write("{not json\n")
    pq.write_table(pa.table({"content": rows[10:20] + [None]}), d / "b.parquet", row_group_size=4)
    (d / "c.txt").write_text("\n===\n".join(rows[20:]))
    skipped = []
    got = list(P.documents(str(d), text_field="content", doc_separator="\n===\n", skipped=skipped))
    assert [t for _, t in got] == rows
    assert [k for k, _ in got][:2] == ["a.jsonl#0", "a.jsonl#1"] and got[10][0] == "b.parquet#0" and got[-1][0] == "c.txt#9"
    assert skipped == [(str(d / "a.jsonl") + ":12", "JSONDecodeError")]
    meta = P.prepare_data(str(tmp_path / "out"), source=str(d), tokenizer=sp_model, text_field="content",
                          doc_separator="\n===\n", val_fraction=0.1, test_fraction=0.1, num_proc=1)
    assert sum(v["documents"] for v in meta["splits"].values()) == 30
    assert sum(v["bytes"] for v in meta["splits"].values()) == sum(len(r.encode()) for r in rows)
    meta = P.prepare_data(str(tmp_path / "first12"), source=str(d), tokenizer=sp_model, text_field="content",
                          max_documents=12, num_proc=1)
    assert sum(v["documents"] for v in meta["splits"].values()) == 12
    assert sum(v["bytes"] for v in meta["splits"].values()) == sum(len(r.encode()) for r in rows[:12])
    with pytest.raises(InputError, match=r"a.jsonl:1 has no 'text' field .*'content'.*set --text_field"):
        list(P.documents(str(d)))
    with pytest.raises(InputError, match=r"b.parquet has no 'body' column"):
        list(P.documents(str(d / "b.parquet"), text_field="body"))


def test_hf_source_streams_rows_and_fails_clearly(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [{"id": f"doc-{i}", "text": f"text {i}"} for i in range(5)] + [{"id": "e", "text": ""}]
    seen = {}

    def load_dataset(name, config, split, streaming):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        return iter(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    got = list(P.documents("hf:org/set", hf_config="sample", hf_split="train"))
    assert got == [(f"doc-{i}", f"text {i}") for i in range(5)]
    assert seen == {"name": "org/set", "config": "sample", "split": "train", "streaming": True}
    assert P.default_name("hf:HuggingFaceFW/fineweb-edu", "sample-10BT") == "fineweb-edu-sample-10BT"
    assert P.default_name("some/corpus/") == "corpus" and P.default_name("x/tiny.jsonl") == "tiny"

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'org/set' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match=r"cannot stream Hugging Face dataset 'org/set' \(Couldn't reach.*network"):
        list(P.documents("hf:org/set"))


def test_undecodable_files_are_skipped_and_counted(corpus, sp_model, tmp_path, capsys):
    d = tmp_path / "c"
    shutil.copytree(corpus, d)
    (d / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    meta = _run(tmp_path / "out", d, tokenizer=sp_model)
    ref = _run(tmp_path / "ref", corpus, tokenizer=sp_model)
    assert meta["splits"] == ref["splits"]
    assert "skipped 1 unreadable or non-UTF-8 inputs, first" in capsys.readouterr().out


@pytest.mark.parametrize("kw, message", [
    (dict(source="/no/such/corpus"), r"source '/no/such/corpus' not found: give 'stdlib'"),
    (dict(tokenizer="/no/such/tokenizer.model"), r"tokenizer file '/no/such/tokenizer.model' not found"),
    (dict(tokenizer="tiktoken:nope"), r"unknown tiktoken encoding 'nope'"),
    (dict(vocab_size=100_000), r"SentencePiece training failed: .*Vocabulary size too high.*--vocab_size"),
    (dict(vocab_size=10), r"vocab_size=10 is too small for this text: .* need (\d+): use --vocab_size=\1 or more"),
    (dict(max_documents=-1), r"max_documents=-1 must be at least 0"),
    (dict(val_fraction=0.6, test_fraction=0.5), r"val_fraction and test_fraction"),
    (dict(dtype="int8"), r"dtype='int8'"),
])
def test_bad_settings_stop_with_one_clear_line(corpus, tmp_path, kw, message):
    with pytest.raises(InputError, match=message):
        _run(tmp_path / "x", corpus, **kw)


def test_empty_corpus(tmp_path, sp_model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("")
    with pytest.raises(InputError, match="no documents in .*empty.*--extensions"):
        _run(tmp_path / "o1", tmp_path / "empty", tokenizer=sp_model)
    with pytest.raises(InputError, match="no text to train the tokenizer on"):
        _run(tmp_path / "o2", tmp_path / "empty")


def test_missing_data_folder():
    with pytest.raises(InputError, match="meta.json not found: prepare the data first"):
        data_lib.open_split("/no/such/data", "train")


def _cli(*args, env=None):
    r = subprocess.run([sys.executable, "prepare.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    assert "source '/no/such/dir' not found" in _cli("--source=/no/such/dir", f"--data_root={tmp_path}")
    assert "tokenizer file 'nope.model' not found" in _cli("--tokenizer=nope.model", f"--data_root={tmp_path}")
    assert "unknown setting 'vocab'" in _cli("--vocab=5")
    if importlib.util.find_spec("datasets"):
        line = _cli("--source=hf:no-such-org/no-such-set", f"--data_root={tmp_path}", env={"HF_HUB_OFFLINE": "1"})
        assert "cannot stream Hugging Face dataset 'no-such-org/no-such-set'" in line


def test_ctrl_c_while_tokenizing_in_processes_prints_one_line(sp_model, tmp_path):
    """Ctrl-C reaches the whole process group: the pool's workers leave it to the main process, which prints
    `interrupted` alone (each worker printed a KeyboardInterrupt traceback before)."""
    import signal
    p = subprocess.Popen([sys.executable, "prepare.py", f"--tokenizer={sp_model}", "--num_proc=2",
                          f"--data_root={tmp_path}", "--name=s"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a shell's `&` ignores it
    seen = ""
    while "tokens=" not in seen:  # the pool's first batch is in: its workers are up, and seconds of work remain
        ch = p.stderr.read(1)
        assert ch, seen
        seen += ch
    os.killpg(p.pid, signal.SIGINT)
    err = seen + p.communicate(timeout=120)[1]
    assert p.returncode == 130 and err.rstrip().endswith("interrupted"), err[-2000:]
    assert "Traceback" not in err and "Process ForkPoolWorker" not in err, err[-2000:]


def test_tiktoken_offline_says_so(tmp_path):
    import tiktoken
    try:
        tiktoken.get_encoding("gpt2")
        pytest.skip("tiktoken's gpt2 files are reachable here (network or cache)")
    except Exception:
        pass
    line = _cli("--tokenizer=tiktoken:gpt2", f"--data_root={tmp_path}")
    assert "could not fetch the BPE files of 'gpt2'" in line and "TIKTOKEN_CACHE_DIR" in line
