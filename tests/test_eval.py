"""eval.py: request scoring against a direct log-prob computation, the metrics, few-shot prompts, every task
format on handmade files, rolling perplexity, bad input, and parity with lm-evaluation-harness itself."""
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import eval as ev
from model import ModelConfig, Transformer
from configurator import InputError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine run several times faster on one thread than on two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- handmade task files

POOL_N = 6  # few-shot pool documents per task (train/dev splits)


def _docs(task, n, salt):
    """n small documents of `task` in the public dataset's schema; salt makes pool and eval docs differ."""
    r = random.Random(f"{task}-{salt}")
    words = "red blue green cold warm river stone bird tree light water fire sand wind cloud".split()
    w = lambda k=3: " ".join(r.choice(words) for _ in range(k))  # noqa: E731
    out = []
    for i in range(n):
        if task in ("arc_easy", "arc_challenge"):
            labels = ["A", "B", "C", "D"] if i % 3 else ["1", "2", "3"]
            out.append({"id": f"{salt}{i}", "question": f"Which {w(2)} is {w(1)}?",
                        "choices": {"text": [w(r.randint(1, 4)) for _ in labels], "label": labels},
                        "answerKey": r.choice(labels)})
        elif task == "boolq":
            out.append({"passage": f"The {w()} is {w(2)}.", "question": f"is the {w(2)} {w(1)}", "label": r.randint(0, 1)})
        elif task == "hellaswag":
            out.append({"activity_label": w(1).title(), "ctx_a": f"A {w(2)} [header] walks.", "ctx_b": f"then {w(2)}",
                        "endings": [f"{w(r.randint(1, 5))} [title] {w(1)}" for _ in range(4)], "label": str(r.randint(0, 3))})
        elif task == "piqa":
            out.append({"goal": f"How to {w(2)}?", "sol1": w(3), "sol2": w(5), "label": r.randint(0, 1)})
        elif task == "sciq":
            out.append({"support": f"  {w(6)}." if i % 2 else "", "question": f"What is {w(2)}?", "distractor1": w(1),
                        "distractor2": w(2), "distractor3": w(1), "correct_answer": w(2)})
        elif task == "winogrande":
            out.append({"sentence": f"The {w(1)} hit the {w(1)} because _ was {w(2)}.", "option1": w(1),
                        "option2": w(1), "answer": r.choice(["1", "2"])})
        elif task == "truthfulqa_mc2":
            k = r.randint(2, 5)
            out.append({"question": f"Why is the {w(2)} {w(1)}?",
                        "mc2_targets": {"choices": [w(r.randint(1, 6)) + "." for _ in range(k)],
                                        "labels": [1] * (k // 2) + [0] * (k - k // 2)}})
        elif task == "mmlu":
            out.append({"question": f" {w(3)}? ", "subject": ["anatomy", "virology"][i % 2],
                        "choices": [w(r.randint(1, 3)) for _ in range(4)], "answer": r.randint(0, 3)})
        elif task == "race":
            probs = [{"question": f"The {w(2)}  _  .", "options": [w(1) for _ in range(4)], "answer": "B"},
                     {"question": f"Why {w(2)}?", "options": [w(2) for _ in range(4)], "answer": "D"},
                     {"question": f"What {w(1)}?", "options": [w(r.randint(1, 3)) for _ in range(4)],
                      "answer": r.choice("ABCD")}]
            out.append({"example_id": f"{salt}{i}", "article": f"{w(8)}. {w(6)}.", "problems": str(probs[r.randint(0, 1):])})
        elif task == "openbookqa":
            out.append({"id": f"{salt}{i}", "question_stem": f"The {w(3)}", "choices": {"text": [w(2) for _ in range(4)],
                        "label": ["A", "B", "C", "D"]}, "answerKey": r.choice("ABCD")})
        elif task == "crows_pairs_english":
            out.append({"sent_more": f"The {w(4)}.", "sent_less": f"The {w(3)}.", "bias_type": "age"})
    return out


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evals")
    for name, t in ev.TASKS.items():
        os.makedirs(root / name)
        for sp, n, salt in ((t.split, 5, "eval"), (t.fewshot_split, POOL_N, "pool")):
            if os.path.exists(root / name / f"{sp}.jsonl"):
                continue  # the pool is the eval split itself (race, crows_pairs, truthfulqa)
            with open(root / name / f"{sp}.jsonl", "w") as f:
                f.writelines(json.dumps(d) + "\n" for d in _docs(name, n if name != "mmlu" else 2 * n, salt))
    return str(root)


@pytest.fixture(scope="module")
def tok(tmp_path_factory, task_dir):
    """A tiny SentencePiece BPE trained on the task files (BOS 1, EOS 2, like LLaMA's)."""
    import sentencepiece as spm
    from tokenizer import Tokenizer
    d = tmp_path_factory.mktemp("tok")
    text = "".join(open(os.path.join(task_dir, n, f), encoding="utf-8").read()
                   for n in ev.TASKS for f in os.listdir(os.path.join(task_dir, n)))
    (d / "corpus.txt").write_text(text.replace("\\n", "\n"))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=400,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True,
                                   minloglevel=2, num_threads=1)
    return Tokenizer(str(d / "tokenizer.model"))


def tiny_model(vocab, elm=True, block_size=512, seed=0):
    torch.manual_seed(seed)
    if elm:  # OpenELM-shaped: layer-wise scaling, GQA, QK-norm, tied embeddings
        cfg = ModelConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_embd=64, head_dim=16,
                          qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0), num_gqa_groups=2,
                          ffn_dim_divisor=16, qk_norm=True, tie_embeddings=True, init="corenet")
    else:
        cfg = ModelConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_embd=48, n_head=4, ffn_dim=96)
    m = Transformer(cfg).eval()
    with torch.no_grad():  # larger logits than init gives, so scores differ clearly between choices
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return m


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.vocab_size + 12)  # a padded vocabulary, as real checkpoints have


def direct_logprob(model, ctx, cont, max_len):
    """log P(cont | ctx) from one unbatched forward, truncated from the left as the harness does."""
    seq = (list(ctx) + list(cont))[-(max_len + 1):]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([seq[:-1]])).float(), -1)[0]
    n = len(cont)
    tgt = torch.tensor(seq[-n:])
    lp = logp[-n:]
    return lp.gather(-1, tgt[:, None]).sum().item(), bool((lp.argmax(-1) == tgt).all())


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("elm", [True, False])
def test_scores_equal_direct_logprob(elm):
    """Shared-context groups (KV cache, left padding), single requests (plain batch), truncation, greedy flags."""
    model = tiny_model(97, elm=elm, block_size=32)
    r = random.Random(1)
    reqs = []
    for g in range(7):  # groups of 1-4 choices with one context each, contexts of very different lengths
        ctx = [1] + [r.randrange(3, 97) for _ in range(r.choice([0, 3, 11, 40]))]  # 40 + cont > 32: truncated
        for _ in range(r.randint(1, 4)):
            reqs.append((ctx, [r.randrange(3, 97) for _ in range(r.randint(1, 6))]))
    reqs.append(([1], [5]))  # one token of context and of continuation
    ctx0 = reqs[0][0]
    reqs.append((ctx0, [int(model(torch.tensor([ctx0[-31:]]))[0, -1].argmax())]))  # greedy by construction
    r.shuffle(reqs)
    ref = [direct_logprob(model, ctx, cont, 32) for ctx, cont in reqs]
    for batch in (1, 3, 16):
        got = ev.score(model, reqs, max_len=32, batch=batch)
        for (ctx, cont), (ll, greedy), (ref_ll, ref_greedy) in zip(reqs, got, ref):
            assert ll == pytest.approx(ref_ll, rel=1e-5, abs=1e-6), (batch, len(ctx), len(cont))
            assert greedy == ref_greedy
    assert any(g for _, g in ev.score(model, reqs, 32))


def test_encode_pair_moves_trailing_space(tok):
    ctx, cont = ev.encode_pair(tok, "Question: red bird\nAnswer: ", "blue")
    whole = tok.encode("Question: red bird\nAnswer: blue", bos=True)
    assert ctx == tok.encode("Question: red bird\nAnswer:", bos=True) and ctx + cont == whole
    assert ctx[0] == tok.bos_id and cont[0] != tok.bos_id
    ctx, cont = ev.encode_pair(tok, "", "The red bird.")  # empty context: BOS alone conditions
    assert ctx == [tok.bos_id] and cont == tok.encode("The red bird.")
    ctx, _ = ev.encode_pair(tok, "red", " bird", bos=False)
    assert ctx == tok.encode("red")


# ----------------------------------------------------------------------------- metrics


def test_acc_and_acc_norm_ties_and_length():
    doc = {"question": "q", "choices": {"text": ["a", "longer answer", "bb"], "label": ["A", "B", "C"]}, "answerKey": "B"}
    # the long answer has the lowest total log-prob but the best per-character one: acc misses, acc_norm hits
    assert ev.doc_metrics("arc_easy", doc, [-3.0, -6.5, -4.0]) == {"acc": 0.0, "acc_norm": 1.0}
    # exact ties go to the first index (np.argmax): gold B tied with A loses
    assert ev.doc_metrics("arc_easy", doc, [-2.0, -2.0, -9.0])["acc"] == 0.0
    doc["answerKey"] = "A"
    assert ev.doc_metrics("arc_easy", doc, [-2.0, -2.0, -9.0])["acc"] == 1.0
    # per-character ties: "a" (-1/1) and "bb" (-2/2) tie; the first wins
    assert ev.doc_metrics("arc_easy", doc, [-1.0, -50.0, -2.0])["acc_norm"] == 1.0
    # acc_norm divides by characters of the choice text (without the leading space), not by tokens or bytes
    doc2 = {"question": "q", "choices": {"text": ["é", "ab"], "label": ["A", "B"]}, "answerKey": "A"}
    assert ev.doc_metrics("arc_easy", doc2, [-1.0, -1.9])["acc_norm"] == 0.0  # -1/1 < -1.9/2 (bytes would tie)


def test_stderr_matches_harness():
    metrics = pytest.importorskip("lm_eval.api.metrics")
    r = random.Random(0)
    xs = [float(r.random() < 0.4) for _ in range(37)]
    assert ev._stderr(xs) == pytest.approx(metrics.mean_stderr(xs))
    subjects = [["anatomy", "virology", "law"][i % 3] for i in range(37)]
    per = {s: [x for x, t in zip(xs, subjects) if t == s] for s in dict.fromkeys(subjects)}
    want = metrics.pooled_sample_stderr([metrics.mean_stderr(v) for v in per.values()], [len(v) for v in per.values()])
    assert ev._stderr(xs, subjects) == pytest.approx(want)  # MMLU's group stderr


def test_mc2_crows_winogrande_metrics():
    doc = {"question": "q", "mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 1, 0]}}
    lls = [math.log(0.2), math.log(0.3), math.log(0.5)]
    assert ev.doc_metrics("truthfulqa_mc2", doc, lls)["acc"] == pytest.approx(0.5)
    assert ev.doc_metrics("truthfulqa_mc2", doc, [-5000.0, -5001.0, -5002.0])["acc"] == pytest.approx(
        (1 + math.exp(-1)) / (1 + math.exp(-1) + math.exp(-2)))  # stable where exp() underflows
    crow = {"sent_more": "x", "sent_less": "y"}
    assert ev.doc_metrics("crows_pairs_english", crow, [-3.0, -5.5]) == {"likelihood_diff": 2.5, "pct_stereotype": 1.0}
    assert ev.doc_metrics("crows_pairs_english", crow, [-3.0, -3.0])["pct_stereotype"] == 0.0
    wg = {"sentence": "A b _ c d.", "option1": "x", "option2": "y", "answer": "2"}
    assert ev.TASKS["winogrande"].fn(wg) == (["A b x", "A b y"], ["c d."], 1)
    assert ev.doc_metrics("winogrande", wg, [-4.0, -3.0])["acc"] == 1.0


def test_fewshot_prompts_deterministic(task_dir):
    docs = ev.read_docs(task_dir, "arc_easy", "test")
    pool = ev.read_docs(task_dir, "arc_easy", "train")
    a = [ev.fewshot_context("arc_easy", d, pool, 3, random.Random(1234)) for d in docs]
    b = [ev.fewshot_context("arc_easy", d, pool, 3, random.Random(1234)) for d in docs]
    c = [ev.fewshot_context("arc_easy", d, pool, 3, random.Random(7)) for d in docs]
    assert a == b and a != c
    ctx, cont = a[0][0]
    assert ctx.count("\n\n") == 3 and ctx.endswith(f"Question: {docs[0]['question']}\nAnswer:") and cont[0] == " "
    # the harness's sampler: one generator advanced doc by doc, rnd.sample(pool, n)
    rnd, rnd2 = random.Random(1234), random.Random(1234)
    for d in docs:
        shots = rnd2.sample(pool, 2)
        want = "".join(f"Question: {s['question']}\nAnswer: {ev.arc(s)[1][ev.arc(s)[2]]}\n\n" for s in shots)
        assert ev.fewshot_context("arc_easy", d, pool, 2, rnd)[0][0] == want + f"Question: {d['question']}\nAnswer:"
    mm = ev.read_docs(task_dir, "mmlu", "test")[1]
    ctx = ev.fewshot_context("mmlu", mm, ev.read_docs(task_dir, "mmlu", "dev"), 2, random.Random(0))[0][0]
    assert ctx.startswith(f"The following are multiple choice questions (with answers) about {mm['subject']}.\n\n")
    assert ctx.count("Answer:") == 3


@pytest.mark.parametrize("shots", [0, 2])
def test_every_task_parses_and_scores(model, tok, task_dir, shots):
    res = ev.evaluate(model, tok, list(ev.TASKS), task_dir, num_fewshot=shots, batch=8)
    for name, t in ev.TASKS.items():
        r = res["results"][name]
        assert r["samples"] == (10 if name == "mmlu" else 5) and res["n-shot"][name] == (0 if name == "truthfulqa_mc2" else shots)
        for m in t.metrics:
            assert math.isfinite(r[m]) and r[m] >= 0 and (m == "likelihood_diff" or r[m] <= 1), (name, m, r[m])
    assert {"mmlu_stem", "mmlu_other"} <= set(res["results"])  # anatomy is STEM, virology other
    table = ev.markdown_table(res)
    assert table.splitlines()[0] == "|Tasks|Version|Filter|n-shot|Metric| |Value| |Stderr|"
    assert "|hellaswag|1|none|" in table and "|acc_norm|↑|" in table and "|pct_stereotype|↓|" in table


# ----------------------------------------------------------------------------- perplexity


def test_rolling_windows_match_harness():
    lm_utils = pytest.importorskip("lm_eval.utils")
    for n in (1, 5, 16, 17, 40, 63):
        toks = list(range(10, 10 + n))
        for max_len, ctx_len in ((16, 1), (16, 4), (8, 8), (5, 1)):
            want = [lm_utils.make_disjoint_window(w) for w in
                    lm_utils.get_rolling_token_windows(toks, prefix_token=1, max_seq_len=max_len, context_len=ctx_len)]
            assert ev.rolling_windows(toks, 1, max_len, ctx_len) == want, (n, max_len, ctx_len)


def test_rolling_perplexity_equals_direct_loss(model, tok):
    text = "The red bird saw the cold river and the warm stone under the light of the green tree. " * 6
    ids = tok.encode(text)
    assert len(ids) > 100
    L = 48  # several windows
    ll = ev.rolling_loglikelihood(model, tok, [text], max_len=L, batch=4)[0]
    seq = [tok.bos_id] + ids
    direct = 0.0
    with torch.no_grad():
        for p in range(1, len(seq), L):  # windows predict seq[p:q], L new tokens each (context_len=1) ...
            q = min(p + L, len(seq))
            x = torch.tensor([seq[max(0, q - 1 - L):q - 1]])  # ... the last one with a full L tokens of history
            y = torch.tensor(seq[p:q])
            logits = model(x)[0, -(q - p):]
            direct += F.cross_entropy(logits.float(), y, reduction="sum").item()
    assert -ll == pytest.approx(direct, rel=1e-5)
    # a text that fits one window: exactly the model's own loss on BOS + tokens
    short = ids[:30]
    ll = ev.rolling_loglikelihood(model, tok, [tok.decode(short)], max_len=L)[0]
    with torch.no_grad():
        loss = model(torch.tensor([[tok.bos_id] + short[:-1]]), torch.tensor([short]))[1].item()
    assert -ll / 30 == pytest.approx(loss, rel=1e-5)


def test_text_perplexity_files(model, tok, tmp_path):
    docs = ["The red bird saw the cold river.", "Warm stone, green tree é."]
    (tmp_path / "a.txt").write_text(docs[0], encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    one = ev.text_perplexity(model, tok, str(tmp_path / "a.txt"), 16)
    ll = ev.rolling_loglikelihood(model, tok, docs[:1], 16)[0]
    assert one["loss"] == pytest.approx(-ll / len(tok.encode(docs[0])))
    assert one["bits_per_byte"] == pytest.approx(-ll / math.log(2) / len(docs[0].encode()))
    assert one["word_perplexity"] == pytest.approx(math.exp(-ll / 7))
    two = ev.text_perplexity(model, tok, str(tmp_path / "b.jsonl"), 16)  # documents scored separately
    lls = ev.rolling_loglikelihood(model, tok, docs, 16)
    assert two["documents"] == 2 and two["bits_per_byte"] == pytest.approx(
        -sum(lls) / math.log(2) / sum(len(d.encode()) for d in docs))
    with pytest.raises(InputError, match="text file .* not found"):
        ev.text_perplexity(model, tok, str(tmp_path / "missing.txt"), 16)
    with pytest.raises(InputError, match="text file .* is a folder, not a file"):
        ev.text_perplexity(model, tok, str(tmp_path), 16)


def test_token_split_perplexity_and_bits_per_byte(model, tok, tmp_path):
    import numpy as np
    ids = [tok.bos_id] + tok.encode("red bird cold river " * 20) + [tok.eos_id]
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "test.bin")
    meta = {"tokenizer": "sentencepiece", "tokenizer_file": "tokenizer.model", "tiktoken_encoding": None,
            "vocab_size": tok.vocab_size, "dtype": "uint16", "bos_id": 1, "eos_id": 2, "pad_id": None,
            "source": "test", "splits": {"test": {"files": ["test.bin"], "tokens": len(ids), "documents": 1, "bytes": 400}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    out = ev.token_split_perplexity(model, str(tmp_path), "test", max_len=512)
    with torch.no_grad():
        loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))[1].item()
    assert out["tokens"] == len(ids) - 1 and out["loss"] == pytest.approx(loss, rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(loss * (len(ids) - 1) / math.log(2) / 400, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    import shutil
    import sentencepiece as spm
    shutil.copy(tok.spec, tmp_path / "tokenizer.model")
    assert ev.token_split_perplexity(model, str(tmp_path), "test", 512, tok=tok)["loss"] == pytest.approx(out["loss"])
    spm.SentencePieceTrainer.train(input=os.path.join(os.path.dirname(tok.spec), "corpus.txt"), vocab_size=350,
                                   model_prefix=str(tmp_path / "other"), model_type="bpe", minloglevel=2)
    from tokenizer import Tokenizer
    with pytest.raises(InputError, match=".*different tokenizer than the checkpoint's"):
        ev.token_split_perplexity(model, str(tmp_path), "test", 512, tok=Tokenizer(str(tmp_path / "other.model")))
    meta["vocab_size"] = model.config.vocab_size + 1  # data tokenized for another model
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=".*tokenized with"):
        ev.token_split_perplexity(model, str(tmp_path), "test", max_len=512)


# ----------------------------------------------------------------------------- bad input


def test_bad_input(task_dir, tmp_path, model, tok, monkeypatch):
    with pytest.raises(InputError, match="unknown task 'arc_eazy'"):
        ev.task_names("arc_easy,arc_eazy")
    with pytest.raises(InputError, match="task data .* not found: run .*--download=True"):
        ev.evaluate(model, tok, ["piqa"], str(tmp_path))
    with pytest.raises(InputError, match=r"task data not found in .*: piqa/validation.jsonl, piqa/train.jsonl, "
                                         r"boolq/validation.jsonl, boolq/train.jsonl: run `python eval.py --tasks=piqa,boolq --data_dir="):
        ev.evaluate(model, tok, ["piqa", "boolq"], str(tmp_path), num_fewshot=1)  # every missing file in one line
    with pytest.raises(InputError, match="boolq has 6 few-shot examples, too few"):
        ev.evaluate(model, tok, ["boolq"], task_dir, num_fewshot=POOL_N + 1)
    import checkpoint
    small = tiny_model(50)  # a checkpoint whose vocabulary is smaller than the tokenizer's
    monkeypatch.setattr(checkpoint, "_load", lambda *a: (small, tok))  # stand-in for the files it would read
    with pytest.raises(InputError, match=f"the tokenizer has {tok.vocab_size} tokens but out/x has 50"):
        ev.load("out/x")
    monkeypatch.setattr(checkpoint, "_load", lambda *a: (small, None))
    with pytest.raises(InputError, match="holds no tokenizer"):
        ev.load("out/x")
    r = subprocess.run([sys.executable, "eval.py", "--tasks=piqa,nope"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: unknown task 'nope'")
    r = subprocess.run([sys.executable, "eval.py", "--ppl=data/x", "--limit=2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (  # it was ignored: the whole split was scored
        "error: --limit=2 counts the documents of --tasks, and none are given: --ppl scores the whole split "
        "(--max_tokens=N reads at most N tokens a shard)")


# ----------------------------------------------------------------------------- lm-evaluation-harness parity

HARNESS_YAML = {  # task -> (yaml in lm_eval/tasks, {split: file split})
    "arc_easy": ("arc/arc_easy.yaml", {"test": "test", "train": "train"}),
    "arc_challenge": ("arc/arc_challenge.yaml", {"test": "test", "train": "train"}),
    "boolq": ("super_glue/boolq/default.yaml", {"validation": "validation", "train": "train"}),
    "hellaswag": ("hellaswag/hellaswag.yaml", {"validation": "validation", "train": "train"}),
    "piqa": ("piqa/piqa.yaml", {"validation": "validation", "train": "train"}),
    "sciq": ("sciq/sciq.yaml", {"test": "test", "train": "train"}),
    "winogrande": ("winogrande/default.yaml", {"validation": "validation", "train": "train"}),
    "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", {"validation": "validation"}),
    "mmlu": ("mmlu/default/mmlu_anatomy.yaml", {"test": "test", "dev": "dev"}),
    "race": ("race/race.yaml", {"test": "test"}),
    "openbookqa": ("openbookqa/openbookqa.yaml", {"test": "test", "train": "train"}),
    "crows_pairs_english": ("crows_pairs/crows_pairs_english.yaml", {"test": "test"}),
}


@pytest.fixture(scope="module")
def harness(task_dir, tmp_path_factory):
    """Our tasks as lm_eval tasks: each includes the official yaml and only swaps in the handmade files."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    base = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    inc = tmp_path_factory.mktemp("harness_tasks")
    sub = tmp_path_factory.mktemp("mmlu_anatomy")
    for name, (yaml_path, splits) in HARNESS_YAML.items():
        d = task_dir
        if name == "mmlu":  # the harness runs one subject per task: keep anatomy's docs
            for sp in splits:
                os.makedirs(sub / "mmlu", exist_ok=True)
                rows = [x for x in ev.read_docs(task_dir, "mmlu", sp) if x["subject"] == "anatomy"]
                (sub / "mmlu" / f"{sp}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
            d = str(sub)
        files = "\n".join(f"    {k}: {os.path.join(d, name, v + '.jsonl')}" for k, v in splits.items())
        nulls = "".join(f"{k}_split: null\n" for k in ("training", "validation", "test")
                        if {"training": "train", "validation": "validation", "test": "test"}[k] not in splits)
        (inc / f"local_{name}.yaml").write_text(
            f"include: {os.path.join(base, yaml_path)}\ntask: local_{name}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n{files}\n{nulls}")
    return TaskManager(include_path=str(inc), include_defaults=False), str(sub), str(inc)


def _harness_lm(model, tok, **kw):
    cls = ev.harness_model_class()
    from lm_eval.api.registry import get_model
    assert get_model("nanoelm") is cls  # registered under our name for `lm_eval --model nanoelm`
    return cls(model=model, tokenizer=tok, batch_size=4, **kw)


def test_harness_adapter_loglikelihood_equals_ours(model, tok):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    pairs = [("Question: red bird?\nAnswer:", " blue"), ("Question: red bird?\nAnswer:", " cold river"),
             ("The stone", " is warm."), ("", "The red bird."), ("A cold ", "wind")]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    got = _harness_lm(model, tok).loglikelihood(reqs)
    want = ev.score(model, [ev.encode_pair(tok, c, k) for c, k in pairs], model.config.block_size)
    for (ctx, cont), g, w in zip(pairs, got, want):
        c, k = ev.encode_pair(tok, ctx, cont)
        assert g[0] == pytest.approx(w[0], rel=1e-5, abs=1e-6) == pytest.approx(direct_logprob(model, c, k, 512)[0], rel=1e-5, abs=1e-6)
    text = "red bird cold river warm stone " * 30
    roll = _harness_lm(model, tok, max_length=40).loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert roll[0] == pytest.approx(ev.rolling_loglikelihood(model, tok, [text], 40)[0], rel=1e-6)
    out = _harness_lm(model, tok).generate_until(
        [Instance("generate_until", {}, ("The red", {"until": ["\n"], "max_gen_toks": 5}), 0)])
    assert isinstance(out[0], str) and "\n" not in out[0]


@pytest.mark.parametrize("shots", [0, 2])
def test_harness_end_to_end_matches_eval(model, tok, task_dir, harness, shots):
    """The official harness (its yaml prompts, samplers, metrics) with our adapter vs eval.py: same request
    strings, same log-likelihoods, same metrics, for every task."""
    import lm_eval
    tm, mmlu_dir, _ = harness
    names = list(HARNESS_YAML)
    out = lm_eval.simple_evaluate(model=_harness_lm(model, tok), tasks=[f"local_{n}" for n in names],
                                  num_fewshot=shots, task_manager=tm, log_samples=True, bootstrap_iters=0,
                                  random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234)
    for name in names:
        d = mmlu_dir if name == "mmlu" else task_dir
        ours = ev.evaluate(model, tok, [name], d, num_fewshot=shots, batch=8)["results"][name]
        theirs = out["results"][f"local_{name}"]
        for m in ev.TASKS[name].metrics:
            # a mean of 0/1 scores, or of mc2's probabilities, which inherit the lls' rounding below
            assert ours[m] == pytest.approx(theirs[f"{m},none"], rel=1e-5, abs=1e-6), (name, m)
        t = ev.TASKS[name]
        docs = ev.read_docs(d, name, t.split)
        pool = ev.read_docs(d, name, t.fewshot_split) if shots else []
        rnd = random.Random(1234)
        n = 0 if name == "truthfulqa_mc2" else shots
        samples = sorted(out["samples"][f"local_{name}"], key=lambda s: s["doc_id"])
        for doc, s in zip(docs, samples):
            pairs = ev.fewshot_context(name, doc, pool, n, rnd)
            assert [tuple(a) for a in s["arguments"]] == pairs or \
                [(a["arg_0"], a["arg_1"]) for a in s["arguments"].values()] == pairs, name
            lls = [ll for ll, _ in ev.score(model, [ev.encode_pair(tok, c, k) for c, k in pairs], 512)]
            # float32 sums in another batching order: equal to a few ulps of their size (values of 30+)
            assert [float(r[0][0]) for r in s["resps"]] == pytest.approx(lls, rel=1e-5, abs=1e-6), name


@pytest.fixture(scope="module")
def run_dir(model, tok, tmp_path_factory):
    """A real run directory (checkpoint.save) with a prepared data dir beside it: the tokenizer copy and a
    test split for --ppl."""
    import shutil
    import numpy as np
    import checkpoint
    root = tmp_path_factory.mktemp("ckpt")
    data = root / "data"
    data.mkdir()
    shutil.copy(tok.spec, data / "tokenizer.model")
    ids = [tok.bos_id] + tok.encode("red bird cold river " * 20) + [tok.eos_id]
    np.array(ids, dtype=np.uint16).tofile(data / "test.bin")
    (data / "meta.json").write_text(json.dumps({
        "tokenizer": "sentencepiece", "tokenizer_file": "tokenizer.model", "tiktoken_encoding": None,
        "vocab_size": tok.vocab_size, "dtype": "uint16", "bos_id": 1, "eos_id": 2, "pad_id": None, "source": "test",
        "splits": {"test": {"files": ["test.bin"], "tokens": len(ids), "documents": 1, "bytes": 400}}}))
    checkpoint.save(str(root / "run"), 10, model, torch.optim.AdamW(model.parameters()), {}, data_dir=str(data))
    return str(root)


def _run(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_tasks_and_perplexity(model, tok, task_dir, run_dir, tmp_path):
    """`python eval.py --init_from=<run> ...` loads through checkpoint.load_model and prints the table."""
    out = tmp_path / "res.json"
    r = _run(f"--init_from={run_dir}/run", "--tasks=piqa,mmlu", f"--data_dir={task_dir}", "--num_fewshot=1",
             f"--ppl={run_dir}/data", "--split=test", f"--out_file={out}", "--batch_size=8")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    want = ev.evaluate(model, tok, ["piqa", "mmlu"], task_dir, num_fewshot=1)["results"]
    assert res["results"]["piqa"]["acc_norm"] == pytest.approx(want["piqa"]["acc_norm"])
    assert res["results"]["mmlu"]["acc"] == pytest.approx(want["mmlu"]["acc"])
    assert res["ppl"]["loss"] == pytest.approx(ev.token_split_perplexity(model, f"{run_dir}/data", "test", 512)["loss"])
    assert "|piqa|1|none|1|acc_norm|↑|" in r.stdout and "bits_per_byte=" in r.stdout
    r = _run(f"--init_from={run_dir}/run", "--tasks=piqa", f"--data_dir={tmp_path}")
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: task data")


def test_harness_cli_runs_our_checkpoint(run_dir, harness):
    """`python eval.py harness --model nanoelm ...` is the official lm_eval CLI with our model registered."""
    _, _, include_dir = harness
    r = _run("harness", "--model", "nanoelm", "--model_args", f"path={run_dir}/run", "--batch_size", "4",
             "--tasks", "local_piqa", "--include_path", include_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "local_piqa" in r.stdout and "acc_norm" in r.stdout
    # a task whose dataset lives on the Hub, with the Hub out of reach: one line, not the datasets traceback
    r = _run("harness", "--model", "nanoelm", "--model_args", f"path={run_dir}/run", "--tasks", "arc_easy",
             env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: lm_eval could not download a task's dataset")
