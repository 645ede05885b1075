# prepare.py's instruction data: the Open-Instruct template and its loss mask, the four formats (and OASST1's two
# shapes), padded and packed rows, overlong conversations, bad records, and sample.py's prompts. Tiny data only.
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data as data_lib  # noqa: E402
import prepare as P  # noqa: E402
import tokenizer as tz  # noqa: E402
from configurator import InputError  # noqa: E402

CASES = {  # format: (records, the template text of each)
    "alpaca": ([{"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
                {"instruction": "  Say hello.\n", "input": "", "output": " Hello there! "}],
               ["<|user|>\nAdd the numbers.\n\n2 and 3\n<|assistant|>\n2 + 3 = 5.</s>\n",
                "<|user|>\nSay hello.\n<|assistant|>\nHello there!</s>\n"]),
    "dolly": ([{"instruction": "Who wrote the book?", "context": "Ann wrote the book in 1990.",
                "response": "Ann wrote it.", "category": "closed_qa"},
               {"instruction": "Name a color.", "context": "", "response": "Blue.", "category": "brainstorming"}],
              ["<|user|>\nWho wrote the book?\n\nAnn wrote the book in 1990.\n<|assistant|>\nAnn wrote it.</s>\n",
               "<|user|>\nName a color.\n<|assistant|>\nBlue.</s>\n"]),
    "messages": ([{"prompt": "Hi", "messages": [
                    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2 + 2?"},
                    {"role": "assistant", "content": "4"}]}],
                 ["<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.</s>\n<|user|>\nWhat is 2 + 2?\n"
                  "<|assistant|>\n4</s>\n"]),
}

# an OASST1 tree: the top-ranked path takes a0 (rank 0, listed last), then p1 (rank 1 beats the unranked p9 listed
# first), then b0 (tied with b1 at rank 0, listed first); the unanswered "Thanks!" at the end is dropped
TREE = {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": {
    "message_id": "t1", "text": "What is tea?", "role": "prompter", "lang": "en", "replies": [
        {"message_id": "a1", "text": "A drink.", "role": "assistant", "rank": 1, "replies": []},
        {"message_id": "a9", "text": "Unranked answer.", "role": "assistant", "rank": None, "replies": []},
        {"message_id": "a0", "text": "A hot drink made from leaves.", "role": "assistant", "rank": 0, "replies": [
            {"message_id": "p9", "text": "Unranked question?", "role": "prompter", "rank": None, "replies": [
                {"message_id": "c0", "text": "Wrong path.", "role": "assistant", "rank": 0, "replies": []}]},
            {"message_id": "p1", "text": "Is it healthy?", "role": "prompter", "rank": 1, "replies": [
                {"message_id": "b0", "text": "Yes, in moderation.", "role": "assistant", "rank": 0, "replies": [
                    {"message_id": "q0", "text": "Thanks!", "role": "prompter", "rank": 0, "replies": []}]},
                {"message_id": "b1", "text": "Tied but second.", "role": "assistant", "rank": 0, "replies": []}]}]}]}}
TREE_TURNS = [("user", "What is tea?"), ("assistant", "A hot drink made from leaves."), ("user", "Is it healthy?"),
              ("assistant", "Yes, in moderation.")]
SMALL_TREE = {"message_tree_id": "t2", "prompt": {"message_id": "t2", "text": "Hello", "role": "prompter", "replies": [
    {"message_id": "h0", "text": "Hi.", "role": "assistant", "rank": 0, "replies": []}]}}


CHATS = [{"messages": [{"role": "user", "content": f"Q{i}: {i} plus {i + 1}?" + " Think step by step." * (i % 5)},
                       {"role": "assistant", "content": f"It is {2 * i + 1}." + " Yes." * (i % 3)}]} for i in range(12)]


def _flat(tree):
    """The tree as the rows of the Hugging Face OpenAssistant/oasst1 table, breadth first (sibling order kept)."""
    rows, queue = [], [(tree["prompt"], None)]
    while queue:
        node, parent = queue.pop(0)
        rows.append({"message_id": node["message_id"], "parent_id": parent, "role": node["role"], "text": node["text"],
                     "rank": node.get("rank"), "message_tree_id": tree["message_tree_id"], "lang": "en"})
        queue += [(r, node["message_id"]) for r in node["replies"]]
    return rows


def _write(path, records):
    path = str(path)
    if path.endswith(".jsonl"):
        with open(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
    elif path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        with open(path, "w") as f:
            json.dump(records, f)
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
    texts = [tz.chat_text(_turns_of(fmt, r), eos="") for fmt, (recs, _) in CASES.items() for r in recs]
    texts += [tz.chat_text(_turns_of("messages", r), eos="") for r in CHATS] * 3
    texts += [f"Question {i}: what is {i} plus {i + 1}? The answer is {2 * i + 1}, said the assistant.\n"
              for i in range(300)]
    P.train_tokenizer(texts, path, vocab_size=320, num_threads=1)
    return tz.Tokenizer(path)


def _turns_of(fmt, rec):
    return {"alpaca": lambda r: [("user", r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")),
                                 ("assistant", r["output"])],
            "dolly": lambda r: [("user", r["instruction"] + ("\n\n" + r["context"] if r["context"] else "")),
                                ("assistant", r["response"])],
            "messages": lambda r: [(m["role"], m["content"]) for m in r["messages"]]}[fmt](rec)


def _runs(ids, mask):
    """The maximal runs of trained tokens."""
    runs, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            runs, run = runs + [run], []
    return runs + [run] * bool(run)


def _check_mask(tok, turns, ids, mask):
    """The mask covers exactly each reply's tokens and its EOS: not the header before, not the "\\n" after."""
    assert len(ids) == len(mask) and ids[0] == tok.bos_id and not mask[0]
    replies = [c.strip() for r, c in turns if r == "assistant"]
    assert _runs(ids, mask) == [tok.encode(r) + [tok.eos_id] for r in replies]
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "".join(replies)  # EOS decodes to nothing
    blanked = [(r, "" if r == "assistant" else c) for r, c in turns]
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == tz.chat_text(blanked, eos="")
    assert sum(mask) == sum(len(tok.encode(r)) + 1 for r in replies)


@pytest.mark.parametrize("fmt, ext", [("alpaca", "json"), ("dolly", "jsonl"), ("messages", "parquet")])
def test_each_format_renders_the_template_and_masks_the_replies(tok, tmp_path, fmt, ext):
    records, texts = CASES[fmt]
    path = _write(tmp_path / f"data.{ext}", records)
    for chosen in ("auto", fmt):
        got, convs = P.conversations(path, chosen)
        convs = list(convs)
        assert got == fmt and [tz.chat_text(t) for _, _, t in convs] == texts
        assert [k for k, _, _ in convs] == [f"data.{ext}#{i}" for i in range(len(records))]
    for _, _, turns in convs:
        _check_mask(tok, turns, *tz.encode_chat(tok, turns))


def test_the_template_by_hand(tok):
    # the exact pieces, so the boundaries cannot drift: BOS | user turn | header | reply | EOS | "\n" + user | header
    turns = [{"role": "user", "content": " Hi "}, ("assistant", "Hello."), ("user", "Bye")]
    ids, mask = tz.encode_chat(tok, turns, add_generation_prompt=True)
    e = tok.encode
    pieces = [([1], False), (e("<|user|>\nHi\n"), False), (e("<|assistant|>\n"), False), (e("Hello."), True),
              ([2], True), (e("\n<|user|>\nBye\n"), False), (e("<|assistant|>\n"), False)]
    assert ids == sum((p for p, _ in pieces), []) and mask == sum(([m] * len(p) for p, m in pieces), [])
    assert tz.chat_text(turns, add_generation_prompt=True) == \
        "<|user|>\nHi\n<|assistant|>\nHello.</s>\n<|user|>\nBye\n<|assistant|>\n"
    assert tz.chat_text(turns[:2]) == "<|user|>\nHi\n<|assistant|>\nHello.</s>\n"
    two = [("user", "a"), ("assistant", "b"), ("assistant", "c")]  # back-to-back replies: "\n" opens the header
    assert tz.chat_text(two, eos="<e>") == "<|user|>\na\n<|assistant|>\nb<e>\n<|assistant|>\nc<e>\n"
    _check_mask(tok, two, *tz.encode_chat(tok, two))


def test_a_conversation_prefix_tokenizes_as_samples_chat_prompt(tok):
    turns = CASES["messages"][0][0]["messages"]
    ids, mask = tz.encode_chat(tok, turns)
    for k, m in enumerate(turns):
        if m["role"] != "assistant":
            continue
        prompt, prompt_mask = tz.encode_chat(tok, turns[:k], add_generation_prompt=True)
        assert ids[:len(prompt)] == prompt and mask[:len(prompt)] == prompt_mask  # the header is never trained
        reply = tok.encode(m["content"]) + [tok.eos_id]
        assert ids[len(prompt):len(prompt) + len(reply)] == reply and all(mask[len(prompt):len(prompt) + len(reply)])


def test_oasst1_top_ranked_path_from_trees_and_from_the_flat_table(tok, tmp_path):
    trees = _write(tmp_path / "oasst_ready.trees.jsonl", [TREE, SMALL_TREE])
    rows_a, rows_b = _flat(TREE), _flat(SMALL_TREE)
    flat_rows = rows_a[1:3] + rows_b[1:] + rows_a[3:] + rows_a[:1] + rows_b[:1]  # trees interleaved, roots last
    flat = _write(tmp_path / "flat.parquet", flat_rows)
    for path in (trees, flat):
        fmt, convs = P.conversations(path)
        convs = list(convs)
        assert fmt == "oasst1" and [t for _, _, t in convs] == [TREE_TURNS, [("user", "Hello"), ("assistant", "Hi.")]]
        _check_mask(tok, convs[0][2], *tz.encode_chat(tok, convs[0][2]))
    assert [w for _, w, _ in convs] == [f"{flat}[{len(flat_rows) - 2}]", f"{flat}[{len(flat_rows) - 1}]"]
    lonely = dict(TREE, prompt=dict(TREE["prompt"], replies=[]))  # a prompt nobody answered
    with pytest.raises(InputError, match=r"lonely.jsonl:1 has no assistant turn"):
        list(P.conversations(_write(tmp_path / "lonely.jsonl", [lonely]), "oasst1")[1])


def _prepare(out, path, tok, **kw):
    return P.prepare_data(str(out), source=str(path), tokenizer=tok.name, chat_format="auto", num_proc=1, **kw)


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("chats") / "chats.jsonl", CHATS), CHATS


def test_padded_and_packed_rows(tok, chats, tmp_path):
    path, recs = chats
    enc = [tz.encode_chat(tok, [(m["role"], m["content"]) for m in r["messages"]]) for r in recs]
    T = max(len(ids) for ids, _ in enc) + 3
    meta = _prepare(tmp_path / "padded", path, tok, seq_len=T, val_fraction=0.0, test_fraction=0.0)
    assert (meta["layout"], meta["seq_len"], meta["packing"], meta["chat_format"]) == ("rows", T, "padded", "messages")
    info = meta["splits"]["train"]
    assert info["files"] == ["train.bin"] and info["mask_files"] == ["train.mask.bin"]
    assert (info["documents"], info["rows"], info["dropped"], info["truncated"]) == (12, 12, 0, 0)
    assert info["tokens"] == sum(len(i) for i, _ in enc) and info["trained_tokens"] == sum(sum(m) for _, m in enc)
    tokens, mask = data_lib.open_rows(tmp_path / "padded", "train")
    for r, (ids, m) in enumerate(enc):  # a conversation per row, then EOS as padding (this tokenizer has no pad)
        assert tokens[r, :len(ids)].tolist() == ids and mask[r, :len(ids)].tolist() == m
        assert (tokens[r, len(ids):] == tok.eos_id).all() and not mask[r, len(ids):].any()

    meta = _prepare(tmp_path / "packed", path, tok, seq_len=T, val_fraction=0.0, test_fraction=0.0, packing="packed")
    info = meta["splits"]["train"]
    tokens, mask = data_lib.open_rows(tmp_path / "packed", "train")
    assert info["rows"] == len(tokens) < 12 and info["documents"] == 12 and info["tokens"] == sum(len(i) for i, _ in enc)
    r, col, per_row = 0, 0, [0]
    for ids, m in enc:  # in order; a row moves on only when the next whole conversation would not fit
        if col + len(ids) > T:
            assert (tokens[r, col:] == tok.eos_id).all() and not mask[r, col:].any()
            r, col = r + 1, 0
            per_row.append(0)
        assert tokens[r, col:col + len(ids)].tolist() == ids and mask[r, col:col + len(ids)].tolist() == m
        col, per_row[-1] = col + len(ids), per_row[-1] + 1
    assert r == len(tokens) - 1 and (tokens[r, col:] == tok.eos_id).all() and max(per_row) > 1
    assert [int((row == tok.bos_id).sum()) for row in tokens] == per_row  # BOS starts each conversation, only


def test_eval_ppl_of_chat_rows_is_the_loss_per_reply_token(tok, chats, tmp_path):
    """eval.py --ppl on a chat split scores what finetuning trains: each reply token (and its EOS) given the
    conversation before it, whatever the batch."""
    import torch
    import eval as ev
    from model import ModelConfig, Transformer
    path, recs = chats
    enc = [tz.encode_chat(tok, [(m["role"], m["content"]) for m in r["messages"]]) for r in recs]
    T = max(len(ids) for ids, _ in enc) + 3
    _prepare(tmp_path / "d", path, tok, seq_len=T, val_fraction=0.0, test_fraction=0.0)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=2, n_embd=32, n_head=4)).eval()
    nll = n = 0
    for ids, m in enc:  # each conversation alone, unpadded: a target is ids[t + 1] where m[t + 1] marks it
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
        for t in range(len(ids) - 1):
            if m[t + 1]:
                nll, n = nll - logp[t, ids[t + 1]].item(), n + 1
    for batch in (1, 5):
        out = ev.token_split_perplexity(model, str(tmp_path / "d"), "train", max_len=T, batch=batch)
        assert out["tokens"] == n == sum(sum(m[1:]) for _, m in enc)
        assert out["loss"] == pytest.approx(nll / n, rel=1e-5)


def test_splits_are_by_record_key_and_files_are_identical_on_a_rerun(tok, chats, tmp_path):
    path, recs = chats
    kw = dict(seq_len=128, val_fraction=0.25, test_fraction=0.25, packing="packed")
    meta = _prepare(tmp_path / "a", path, tok, **kw)
    want = {s: [i for i in range(12) if P.split_of(f"chats.jsonl#{i}", 0.25, 0.25) == s] for s in P._SPLITS}
    assert all(want.values())  # every split has some, for these keys
    for s in P._SPLITS:
        assert meta["splits"][s]["documents"] == len(want[s])
        tokens, mask = data_lib.open_rows(tmp_path / "a", s)
        assert tokens.shape == mask.shape == (meta["splits"][s]["rows"], 128)
        assert tokens.dtype == np.uint16 and mask.dtype == np.uint8 and not tokens.flags.writeable
        first = [int(i) for i in tokens[0, 1:].tolist()]
        assert tok.decode(first).startswith(f"<|user|>\nQ{want[s][0]}:")
    files = lambda d: {f: open(d / f, "rb").read() for f in sorted(os.listdir(d))}
    before = files(tmp_path / "a")
    assert sorted(before) == ["manifest.json", "meta.json", "test.bin", "test.mask.bin", "tokenizer.model", "train.bin",
                              "train.mask.bin", "val.bin", "val.mask.bin"]
    assert _prepare(tmp_path / "a", path, tok, **kw) == meta and files(tmp_path / "a") == before  # up to date
    with pytest.raises(InputError, match=r"a already holds data prepared with other settings \(seq_len=128 -> 64\)"):
        _prepare(tmp_path / "a", path, tok, **{**kw, "seq_len": 64})  # finished data is never replaced
    assert files(tmp_path / "a") == before
    _prepare(tmp_path / "b", path, tok, **kw)
    assert files(tmp_path / "b") == before
    meta = json.loads(before["meta.json"])
    assert list(meta) == ["tokenizer", "tokenizer_file", "tokenizer_files", "tiktoken_encoding", "vocab_size", "dtype", "bos_id", "eos_id",
                          "pad_id", "source", "splits", "layout", "seq_len", "packing", "chat_format"]
    assert list(meta["splits"]["train"]) == ["files", "mask_files", "documents", "rows", "tokens", "trained_tokens",
                                             "dropped", "truncated"]


def test_empty_split_stream_data_and_a_trained_tokenizer(tok, chats, tmp_path):
    path, _ = chats
    _prepare(tmp_path / "c", path, tok, seq_len=128, val_fraction=0.0, test_fraction=0.0)
    tokens, mask = data_lib.open_rows(tmp_path / "c", "val")
    assert tokens.shape == mask.shape == (0, 128) and not os.path.exists(tmp_path / "c" / "val.bin")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("plain text " * 50)
    P.prepare_data(str(tmp_path / "stream"), source=str(tmp_path / "text"), tokenizer=tok.name, num_proc=1)
    with pytest.raises(InputError, match="holds a token stream, not chat rows: prepare it with --chat_format"):
        data_lib.open_rows(tmp_path / "stream", "train")
    # a finished text folder is not turned into chat data; in a folder of its own, no --tokenizer: one is trained
    # on the rendered train conversations
    with pytest.raises(InputError, match="stream already holds data prepared with other settings"):
        P.prepare_data(str(tmp_path / "stream"), source=path, chat_format="messages", vocab_size=300, seq_len=128,
                       num_proc=1)
    assert data_lib.read_meta(tmp_path / "stream")["layout"] == "stream"
    meta = P.prepare_data(str(tmp_path / "trained"), source=path, chat_format="messages", vocab_size=300, seq_len=128,
                          num_proc=1)
    assert meta["vocab_size"] == 300
    t = data_lib.load_tokenizer(tmp_path / "trained")
    tokens, mask = data_lib.open_rows(tmp_path / "trained", "train")
    assert t.decode(tokens[0][mask[0] == 1].tolist()).startswith("It is ")


def test_overlong_conversations_error_drop_or_truncate(tok, chats, tmp_path):
    path, recs = chats
    long = {"messages": [{"role": "user", "content": "Tell a long story."},
                         {"role": "assistant", "content": "Once upon a time. " * 40}]}
    question = {"messages": [{"role": "user", "content": "Why? " * 100}, {"role": "assistant", "content": "Because."}]}
    data = _write(tmp_path / "long.jsonl", recs[:3] + [long] + recs[3:5] + [question])
    ids, m = tz.encode_chat(tok, [(x["role"], x["content"]) for x in long["messages"]])
    short = [tz.encode_chat(tok, [(x["role"], x["content"]) for x in r["messages"]])[0] for r in recs[:5]]
    T = max(map(len, short)) + 2
    kw = dict(seq_len=T, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(InputError, match=rf"long.jsonl:4 is {len(ids):,} tokens, more than seq_len={T}: raise "
                                         rf"--seq_len, or --overlong=drop .* --overlong=truncate"):
        _prepare(tmp_path / "e", data, tok, **kw)
    info = _prepare(tmp_path / "d", data, tok, overlong="drop", **kw)["splits"]["train"]
    assert (info["documents"], info["rows"], info["dropped"], info["truncated"]) == (5, 5, 2, 0)
    info = _prepare(tmp_path / "t", data, tok, overlong="truncate", **kw)["splits"]["train"]
    # the question has no reply left in T tokens: nothing to learn, so it is dropped even so
    assert (info["documents"], info["rows"], info["dropped"], info["truncated"]) == (6, 6, 1, 1)
    tokens, mask = data_lib.open_rows(tmp_path / "t", "train")
    assert tokens[3].tolist() == ids[:T] and mask[3].tolist() == m[:T] and mask[3, -1] == 1
    assert info["tokens"] == sum(map(len, short)) + T and len(tok.encode("Why? " * 100)) > T
    only_q = _write(tmp_path / "q.jsonl", [question])  # truncate leaves nothing: the message does not suggest truncate
    with pytest.raises(InputError, match=rf"no conversations left in .*q.jsonl \(1 dropped as longer than seq_len={T}, "
                                         rf"cut before their first reply\): raise --seq_len$"):
        _prepare(tmp_path / "q", only_q, tok, overlong="truncate", **kw)


@pytest.mark.parametrize("records, ext, fmt, message", [
    ([CASES["alpaca"][0][0], {"instruction": "Hi"}], "json", "auto", r"data.json\[1\] has no 'output' field .*"
     r"'instruction'.*--chat_format=alpaca needs: set the right --chat_format"),
    ([{"instruction": "Hi", "context": "", "reply": "x"}], "jsonl", "dolly", r"data.jsonl:1 has no 'response' field"),
    ([{"messages": [{"role": "user", "content": "Hi"}]}], "jsonl", "auto", r"data.jsonl:1 has no assistant turn"),
    ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}], "jsonl", "auto",
     r"data.jsonl:1, message 1: role 'bot' is not system, user or assistant"),
    ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 5}]}], "jsonl", "messages",
     r"data.jsonl:1, message 1: content is int, not a string"),
    ([{"instruction": "Hi", "input": "", "output": ["x"]}], "jsonl", "alpaca", r"data.jsonl:1: 'output' is a list, not a str"),
    ([{"chosen": [{"role": "user", "content": "Hi"}]}], "jsonl", "auto",
     r"cannot tell the chat format of .*data.jsonl:1 from its keys \['chosen'\]: set --chat_format"),
    ({"instruction": "Hi"}, "json", "auto", r"data.json holds a JSON dict, not a list of records"),
])
def test_bad_records_stop_with_one_line_naming_the_record(tmp_path, records, ext, fmt, message):
    path = _write(tmp_path / f"data.{ext}", records)
    with pytest.raises(InputError, match=message) as e:
        list(P.conversations(path, fmt)[1])
    assert "\n" not in str(e.value)


def test_messages_field_hf_source_and_bad_settings(tok, chats, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "Hi", "prompt_id": "x", "chosen": [{"role": "user", "content": "Hi"},
                                                          {"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}] * 3
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split, streaming: iter(rows))
    fmt, convs = P.conversations("hf:HuggingFaceH4/ultrafeedback_binarized", "auto", messages_field="chosen")
    assert fmt == "messages" and [(k, t[-1][1]) for k, _, t in convs] == [(str(i), "Hello.") for i in range(3)]
    path, _ = chats
    for kw, message in [(dict(chat_format="sharegpt"), "chat_format='sharegpt': use one of auto, alpaca"),
                        (dict(packing="greedy"), "packing='greedy': use one of padded, packed"),
                        (dict(overlong="cut"), "overlong='cut'"), (dict(seq_len=1), "seq_len=1: a chat row needs at least 2 tokens"),
                        (dict(source="stdlib"), "is plain text, not conversations")]:
        with pytest.raises(InputError, match=message):
            P.prepare_data(str(tmp_path / "x"), **{"source": path, "tokenizer": tok.name, "chat_format": "auto", **kw})


def test_llama_style_tokenizer_adds_no_space_between_pieces(tmp_path):
    # LLaMA's SentencePiece adds a dummy "▁" before each encode call's text: turns after the first must be
    # encoded as continuations, or every header and reply would start with a space the template does not have
    import sentencepiece as spm
    texts = [tz.chat_text(_turns_of("messages", r), eos="") for r in CHATS] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / "llama"), vocab_size=400,
                                   model_type="bpe", add_dummy_prefix=True, byte_fallback=True, bos_id=1, eos_id=2,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   unk_id=0, pad_id=-1, minloglevel=2)
    tok = tz.Tokenizer(str(tmp_path / "llama.model"))
    assert tok.decode(tok.encode("<|user|>")).startswith("<") and tok.encode("x y") != tok.encode("x y", continuation=True)
    turns = CASES["messages"][0][0]["messages"]
    ids, mask = tz.encode_chat(tok, turns, add_generation_prompt=True)
    assert tok.decode(ids) == tz.chat_text(turns + [], eos="", add_generation_prompt=True)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Hello.4"


def test_a_finetuned_model_answers_in_turn_through_sample_chat(tok, chats, tmp_path):
    # pretrain a tiny model on plain text, finetune it on the chat rows (loss on the replies only), then ask
    # sample.py's chat mode one of the trained questions: the greedy reply is the trained answer
    import subprocess
    from conftest import run
    path, recs = chats
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("".join(f"{i} plus {i + 1} is {2 * i + 1}.\n" for i in range(200)))
    P.prepare_data(str(tmp_path / "text_data"), source=str(tmp_path / "text"), tokenizer=tok.name, num_proc=1,
                   val_fraction=0.0, test_fraction=0.0)
    _prepare(tmp_path / "chat_data", path, tok, seq_len=128, val_fraction=0.0, test_fraction=0.0, packing="padded")
    arch = dict(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=128)
    common = dict(dtype="float32", log_interval=10, eval_interval=0, save_interval=0, batch_size=12, global_batch_size=12)
    run(data_dir=str(tmp_path / "text_data"), out_dir=str(tmp_path / "pre"), max_iters=20, learning_rate=3e-3,
                   warmup_iters=0, lr_decay_iters=20, log_file=str(tmp_path / "pre.jsonl"), **arch, **common)
    log = run(data_dir=str(tmp_path / "chat_data"), out_dir=str(tmp_path / "chat"), init_from=str(tmp_path / "pre"),
                         epochs=150.0, learning_rate=1e-2, min_lr=1e-3, warmup_ratio=0.03, lr_schedule="linear",
                         log_file=str(tmp_path / "chat.jsonl"), **common)
    assert len(log) == 15 and log[-1]["loss"] < 0.1  # 150 epochs of 12 rows, 12 per step: 150 steps
    ask = CHATS[7]["messages"][0]["content"]
    p = subprocess.run([sys.executable, "sample.py", f"--init_from={tmp_path / 'chat'}", "--chat=True", f"--start={ask}",
                        "--greedy=True", "--max_new_tokens=30", "--device=cpu"], cwd=ROOT, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    reply = p.stdout.split("assistant> ", 1)[1].strip()
    assert reply == CHATS[7]["messages"][1]["content"], p.stdout  # "It is 15. Yes."
    meta = json.load(open(tmp_path / "chat_data" / "meta.json"))  # a train split with no conversations left
    meta["splits"]["train"].update(files=[], mask_files=[], rows=0)
    json.dump(meta, open(tmp_path / "chat_data" / "meta.json", "w"))
    with pytest.raises(InputError, match="train split of .* holds no conversations"):
        run(data_dir=str(tmp_path / "chat_data"), out_dir=str(tmp_path / "empty"), init_from=str(tmp_path / "pre"),
                       epochs=1.0, log_file=str(tmp_path / "empty.jsonl"), **common)
