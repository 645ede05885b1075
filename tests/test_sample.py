"""Generation: speculative decoding equals plain decoding (greedy) or preserves its distribution (sampling),
the sampling controls match a direct computation, the cache rewinds cleanly, left padding changes nothing."""
import copy

import pytest
import torch

import sample
from configurator import InputError
from model import ModelConfig, Transformer


@pytest.fixture(autouse=True)
def one_thread():
    # thousands of tiny forwards: with two threads on two shared cores each op waits for the other thread
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_llama(seed=0, **kw):
    cfg = dict(vocab_size=61, block_size=96, n_layer=2, n_embd=40, n_head=4, n_kv_head=2, ffn_dim=64)
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**cfg, **kw})).double().eval()


def tiny_elm(seed=0, **kw):  # layer-wise scaling, GQA, QK-norm, tied embeddings
    cfg = dict(vocab_size=61, block_size=96, n_layer=3, n_embd=64, head_dim=16, qkv_multipliers=(0.5, 1.0),
               ffn_multipliers=(0.5, 2.0), num_gqa_groups=2, ffn_dim_divisor=16, qk_norm=True,
               tie_embeddings=True, init="corenet")
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**cfg, **kw})).double().eval()


# a prompt that repeats itself, so prompt lookup finds n-grams to propose
PROMPT = torch.tensor([[1, 7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 7, 8, 9, 3, 4, 7, 8]])


@pytest.mark.parametrize("make", [tiny_llama, tiny_elm])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_speculation_is_token_for_token_plain_greedy(make, penalty):
    model, draft = make(0), make(1, n_layer=1)
    plain = sample.generate(model, PROMPT, 40, greedy=True, repetition_penalty=penalty)
    assert plain.shape == (1, PROMPT.shape[1] + 40)
    for kw in (dict(prompt_lookup_num_tokens=6), dict(assistant_model=draft, num_assistant_tokens=4),
               dict(assistant_model=model, num_assistant_tokens=3)):
        stats = {}
        out = sample.generate(model, PROMPT, 40, greedy=True, repetition_penalty=penalty, stats=stats, **kw)
        assert torch.equal(out, plain), kw
        assert stats["proposed"] > 0
    assert stats["accepted"] == stats["proposed"]  # the target drafting for itself is always right


def chi_square_pvalue(counts, expected):
    """Pearson's test with cells of small expectation pooled (each cell >= 5 expected)."""
    order = torch.argsort(expected, descending=True)
    counts, expected = counts[order].double(), expected[order].double()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    assert obs[~keep].sum() == 0, "a token of probability zero was produced"
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), stat / 2))


def test_sample_draws_each_row_from_its_distribution():
    """Rows with zeros at both ends and inside (top-k's masked tokens): never drawn; the rest at their frequencies."""
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                          [0.2, 0.0, 0.0, 0.0, 0.0, 0.8, 0.0]])
    N = 20000
    counts = torch.zeros_like(probs)
    for _ in range(N // 1000):
        draws = sample.sample(probs.repeat_interleave(1000, 0), g).view(3, 1000)
        counts += torch.nn.functional.one_hot(draws, 7).sum(1)
    assert counts[1, 6] == N  # all the mass on the last token
    for row in (0, 2):
        assert chi_square_pvalue(counts[row], N * probs[row]) > 1e-3
    # the ends of the uniform draw: the first and the last token of nonzero probability, never a zero one
    real_rand = torch.rand
    for r, want in ((0.0, [5, 6, 5]), (1 - 2 ** -53, [1, 6, 0])):
        torch.rand = lambda *a, r=r, **k: torch.full(a[:2], r, dtype=torch.float64)
        try:
            assert sample.sample(probs).tolist() == want
        finally:
            torch.rand = real_rand


def test_accept_rule_preserves_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    V, n, N = 6, 3, 20000
    p = torch.rand(n + 1, V, generator=g) ** 3
    p = p / p.sum(-1, keepdim=True)
    q = torch.rand(n, V, generator=g) ** 3
    q = q / q.sum(-1, keepdim=True)
    first, naive = torch.zeros(V), torch.zeros(V)
    for _ in range(N):
        draft = sample.sample(q, g)
        first[sample.accept(p, q, draft, g)[0]] += 1
        naive[draft[0]] += 1  # a proposer accepted blindly emits q, which the test must notice
    assert chi_square_pvalue(first, N * p[0]) > 1e-3
    assert chi_square_pvalue(naive, N * p[0]) < 1e-6


def exact_two_tokens(model, prompt, warp):
    """The processed target distribution of the next two tokens, by full forwards: (V, V) joint."""
    V = model.config.vocab_size

    def dist(seq):
        seen = sample.mark_seen(torch.zeros(1, V, dtype=torch.bool), seq)
        return sample.process_logits(model(seq)[:, -1], seen, **warp).softmax(-1)[0]

    p1 = dist(prompt)
    return torch.stack([p1[a] * dist(torch.cat([prompt, torch.tensor([[a]])], 1)) for a in range(V)])


@pytest.mark.parametrize("proposer", ["draft", "lookup"])
def test_speculative_sampling_preserves_target_distribution(proposer):
    V = 7
    model, draft = tiny_llama(0, vocab_size=V, n_layer=1, n_embd=16, n_head=2, ffn_dim=32), tiny_llama(5, vocab_size=V, n_layer=1, n_embd=16, n_head=2, ffn_dim=32)
    with torch.no_grad():  # sharpen the random models, so target and draft disagree clearly
        model.lm_head.weight.mul_(8)
        draft.lm_head.weight.mul_(8)
    prompt = torch.tensor([[1, 2, 3, 1, 2]])
    warp = dict(temperature=0.9, top_k=5, top_p=0.97, repetition_penalty=1.3)
    with torch.no_grad():
        expected = exact_two_tokens(model, prompt, warp).flatten()
    spec = dict(assistant_model=draft, num_assistant_tokens=3) if proposer == "draft" else dict(prompt_lookup_num_tokens=3)
    g = torch.Generator().manual_seed(1)
    N, counts, stats = 2000, torch.zeros(V * V), {"proposed": 0, "accepted": 0}
    for _ in range(N):  # 3 new tokens, so two drafts are judged in one round; we test the first two
        st = {}
        out = sample.generate(model, prompt, 3, generator=g, stats=st, **warp, **spec)
        counts[out[0, 5] * V + out[0, 6]] += 1
        stats = {k: stats[k] + st[k] for k in stats}
    assert 0 < stats["accepted"] < stats["proposed"]  # both branches of the rule were taken
    assert chi_square_pvalue(counts, N * expected) > 1e-3


def reference_process(logits, seen, temperature, top_k, top_p, penalty):
    """Row by row, token by token, as the definitions read."""
    out = logits.clone().double()
    for r in range(out.shape[0]):
        row = out[r]
        for t in range(row.numel()):
            if seen[r, t]:
                row[t] = row[t] / penalty if row[t] > 0 else row[t] * penalty
        row /= temperature
        ranked = sorted(range(row.numel()), key=lambda t: -row[t].item())
        for t in ranked[top_k:]:
            row[t] = float("-inf")
        probs = row.softmax(-1)
        mass = 0.0
        for t in ranked:
            if mass >= top_p:
                row[t] = float("-inf")
            mass += probs[t].item()
    return out


def test_repetition_penalty_top_k_top_p_match_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g) * 3
    seen = torch.rand(4, 50, generator=g) < 0.3
    for temperature, top_k, top_p, penalty in [(1.0, 50, 1.0, 1.5), (0.7, 10, 1.0, 1.0), (1.3, 50, 0.8, 1.0), (0.8, 20, 0.6, 1.2)]:
        got = sample.process_logits(logits, seen, temperature, top_k, top_p, penalty)
        ref = reference_process(logits, seen, temperature, top_k, top_p, penalty).float()
        assert torch.equal(torch.isinf(got), torch.isinf(ref))
        torch.testing.assert_close(got[~torch.isinf(got)], ref[~torch.isinf(ref)])
        try:  # and the same as Hugging Face's processors, whose semantics the controls promise
            from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
        except ImportError:
            continue
        ids = torch.stack([torch.nonzero(s)[:, 0][:5] for s in seen])  # the first 5 seen tokens per row
        seen5 = sample.mark_seen(torch.zeros_like(seen), ids)
        hf = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        hf = TopPLogitsWarper(top_p)(ids, TopKLogitsWarper(top_k)(ids, TemperatureLogitsWarper(temperature)(ids, hf)))
        torch.testing.assert_close(sample.process_logits(logits, seen5, temperature, top_k, top_p, penalty), hf)


@pytest.mark.parametrize("proposer", ["draft", "lookup"])
def test_cache_rewind_forgets_rejected_tokens(proposer):
    model, draft = tiny_elm(0), tiny_elm(1, n_layer=1)
    fresh = copy.deepcopy(model)
    model.setup_cache(1, 96)  # generate reuses a cache that fits: fill it with garbage the mask must hide
    for layer in model.layers:
        layer.attn.kv_cache.k.normal_(0, 100)
        layer.attn.kv_cache.v.normal_(0, 100)
    spec = dict(assistant_model=draft, num_assistant_tokens=5) if proposer == "draft" else dict(prompt_lookup_num_tokens=8)
    stats = {}
    out = sample.generate(model, PROMPT, 30, greedy=True, stats=stats, **spec)
    assert stats["accepted"] < stats["proposed"]  # drafts were rejected, so stale slots were written
    L = out.shape[1]
    # the cache holds every token but the last; slots past that are stale, and must not matter
    fresh.setup_cache(1, 96)
    fresh(out[:, :L - 1], input_pos=torch.arange(L - 1))
    for a, b in zip(model.layers, fresh.layers):
        torch.testing.assert_close(a.attn.kv_cache.k[:, :, :L - 1], b.attn.kv_cache.k[:, :, :L - 1])
        torch.testing.assert_close(a.attn.kv_cache.v[:, :, :L - 1], b.attn.kv_cache.v[:, :, :L - 1])
    # continuing from the rewound cache is the full forward over the accepted sequence
    nxt = model(out[:, -1:], input_pos=torch.tensor([L - 1]))[:, -1]
    torch.testing.assert_close(nxt, model(out)[:, -1])


@pytest.mark.parametrize("make", [tiny_llama, tiny_elm])
def test_left_padded_batch_equals_each_prompt_alone(make):
    model = make(0)
    prompts = [[1, 5, 9, 5, 9], [1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29], [1, 3]]
    idx, mask = sample.pad_left(prompts, pad_id=9)  # the pad id is a real token, so a leak would show
    eos = int(sample.generate(model, torch.tensor([prompts[0]]), 8, greedy=True, repetition_penalty=1.4)[0, -1])
    batch = sample.generate(model, idx, 25, greedy=True, repetition_penalty=1.4, eos_token_id=eos, attention_mask=mask)
    for row, p in zip(batch, prompts):
        alone = sample.generate(model, torch.tensor([p]), 25, greedy=True, repetition_penalty=1.4, eos_token_id=eos)[0]
        new = row[idx.shape[1]:]
        assert torch.equal(new[:alone.numel() - len(p)], alone[len(p):])
        assert (new[alone.numel() - len(p):] == eos).all()  # a finished row waits with EOS


def test_eos_and_callback_stop_generation():
    model = tiny_llama(0)
    plain = sample.generate(model, PROMPT, 20, greedy=True)
    eos = int(plain[0, PROMPT.shape[1] + 4])
    first = torch.isin(plain[0, PROMPT.shape[1]:], torch.tensor([eos, 60])).nonzero()[0, 0].item()
    for kw in ({}, dict(prompt_lookup_num_tokens=5), dict(assistant_model=tiny_llama(3, n_layer=1))):
        out = sample.generate(model, PROMPT, 20, greedy=True, eos_token_id=[eos, 60], **kw)
        assert torch.equal(out, plain[:, :PROMPT.shape[1] + first + 1]), kw
    seen = []
    out = sample.generate(model, PROMPT, 20, greedy=True, callback=lambda new: seen.append(new.tolist()) or len(seen) == 3)
    assert out.shape[1] == PROMPT.shape[1] + 3 and seen == [[[int(t)]] for t in plain[0, PROMPT.shape[1]:][:3]]


def test_what_generate_hands_out_is_ordinary_tensors():
    """generate decodes under inference_mode, but the ids it returns and the tokens its callback sees (plain and
    speculative) are ordinary tensors: a caller can edit them in place and train on them."""
    model = tiny_llama(0)
    for kw in ({}, dict(prompt_lookup_num_tokens=3), dict(assistant_model=tiny_llama(3, n_layer=1))):
        seen = []
        out = sample.generate(model, PROMPT, 8, greedy=True, callback=seen.append, **kw)
        for t in [out, *seen]:  # inference tensors refuse both of these outside inference mode
            assert not t.is_inference(), kw
            model.tok_embeddings(t).sum().backward()
            t.add_(0)
        model.zero_grad()


class CharTokenizer:  # a character tokenizer, enough to check the chat format and streaming
    bos_id, eos_id, pad_id = 1, 2, 0
    chars = "\n <>|/abcdefghijklmnopqrstuvwxyz?!.,'"
    vocab_size = len(chars) + 3

    def encode(self, text, bos=False, eos=False, continuation=False):
        return [self.bos_id] * bos + [self.chars.index(c) + 3 for c in text] + [self.eos_id] * eos

    def decode(self, ids):
        return "".join(self.chars[i - 3] for i in ids if i >= 3)


def test_chat_prompt_is_prepares_open_instruct_encoding():
    import tokenizer  # the one template: sample.py's chat prompts are tokenized as the finetuning data was
    assert sample.encode_chat is tokenizer.encode_chat and not hasattr(sample, "chat_prompt")  # not a second copy
    msgs = [("user", "hi there"), ("assistant", "hello!"), {"role": "user", "content": "how are you?"}]
    text = tokenizer.chat_text(msgs, add_generation_prompt=True)
    assert text == "<|user|>\nhi there\n<|assistant|>\nhello!</s>\n<|user|>\nhow are you?\n<|assistant|>\n"
    tok = CharTokenizer()
    ids, mask = tokenizer.encode_chat(tok, msgs, add_generation_prompt=True)
    assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == 1
    cut = ids.index(tok.eos_id)
    assert tok.decode(ids[:cut]) + "</s>" + tok.decode(ids[cut:]) == text
    assert [i for i, m in zip(ids, mask) if m] == tok.encode("hello!", eos=True)  # the reply and its EOS, only
    assert ids[-len("<|assistant|>\n"):] == tok.encode("<|assistant|>\n")  # ends asking for the next reply


def test_streamer_prints_as_it_goes_and_stops_at_a_stop_string(capsys):
    tok = CharTokenizer()
    prompt = tok.encode("say", bos=True)
    cb = sample.streamer(tok, prompt, stops=["!!"])
    results = [cb(torch.tensor([tok.encode(piece)])) for piece in [" hi", " you", "!!", " more"]]
    assert results == [False, False, True, True]
    assert capsys.readouterr().out == " hi you"


def test_bad_input_gets_one_clear_line(monkeypatch):
    import checkpoint
    model = tiny_llama(0)

    def load_with(m, tok):  # checkpoint.load_model's checks, on a stand-in for the files it would read
        monkeypatch.setattr(checkpoint, "_load", lambda *a: (m, tok))
        return checkpoint.load_model("out/x", need_tokenizer=True)
    cases = [
        (lambda: sample.generate(model, torch.ones(1, 96, dtype=torch.long), 5), "context is 96"),
        (lambda: sample.generate(model, PROMPT, 5, assistant_model=tiny_llama(1, vocab_size=64)), "share the target's tokenizer"),
        (lambda: sample.generate(model, PROMPT.repeat(2, 1), 5, prompt_lookup_num_tokens=3), "one sequence at a time"),
        (lambda: sample.generate(model, PROMPT, 5, prompt_lookup_num_tokens=3, assistant_model=tiny_llama(1)),
         "two ways of proposing drafts: give one"),
        (lambda: sample.generate(model, PROMPT[:, :3], 5, attention_mask=torch.tensor([[1, 0, 1]])), "left padding"),
        (lambda: load_with(model, type("Big", (CharTokenizer,), {"vocab_size": 500})()), "--tokenizer="),
        (lambda: load_with(tiny_llama(0, vocab_size=8192), CharTokenizer()), "--tokenizer="),
        (lambda: load_with(model, None), "holds no tokenizer"),
    ]
    for fn, words in cases:
        with pytest.raises(InputError) as e:
            fn()
        msg = str(e.value)
        assert words in msg and "\n" not in msg


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny LLaMA-shaped model with its own SentencePiece tokenizer, written as a Hugging Face directory."""
    import sentencepiece as spm
    import hf
    from tokenizer import Tokenizer
    d = tmp_path_factory.mktemp("hf")
    text = open(sample.__file__).read().splitlines()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(d / "sp"), vocab_size=300,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, remove_extra_whitespaces=False, minloglevel=2)
    tok = Tokenizer(str(d / "sp.model"))
    hf.save_model(tiny_llama(0, vocab_size=tok.vocab_size).float(), str(d / "model"), tokenizer=tok)
    return str(d / "model")


def run_cli(*args):
    import subprocess
    import sys
    root = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
    return subprocess.run([sys.executable, "sample.py", "--device=cpu", *args], cwd=root, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_command_line_on_a_hugging_face_directory(hf_dir):
    plain = run_cli(f"--init_from={hf_dir}", "--start=def generate(model", "--max_new_tokens=12", "--greedy=True")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("def generate(model") and "tokens/s" in plain.stderr.splitlines()[-1]
    pld = run_cli(f"--init_from={hf_dir}", "--start=def generate(model", "--max_new_tokens=12", "--greedy=True",
                  "--prompt_lookup_num_tokens=4")
    assert pld.returncode == 0 and pld.stdout == plain.stdout and "drafted tokens accepted" in pld.stderr
    draft = run_cli(f"--init_from={hf_dir}", "--start=def generate(model", "--max_new_tokens=12", "--greedy=True",
                    f"--assistant_model={hf_dir}")
    assert draft.returncode == 0 and draft.stdout == plain.stdout and "(100%)" in draft.stderr
    chat = run_cli(f"--init_from={hf_dir}", "--chat=True", "--start=hello", "--max_new_tokens=5", "--num_samples=2")
    assert chat.returncode == 0 and chat.stdout.startswith("assistant> ")
    assert "note: --chat=True answers each message once: --num_samples is ignored" in chat.stderr
    for args, words in [(["--init_from=/no/such/dir"], "not found"),
                        ([f"--init_from={hf_dir}", "--start=" + "x " * 200], "context is 96")]:
        bad = run_cli(*args)
        assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: ") and words in bad.stderr
        assert bad.stdout == ""  # the prompt is echoed with the first new token, not before a refusal
        assert "Traceback" not in bad.stderr


def test_compiled_decode_step_equals_eager():
    model = tiny_llama(0).float()
    eager = sample.generate(model, PROMPT, 20, greedy=True)
    for _ in range(2):  # the second call reuses the cache and the compiled step
        assert torch.equal(sample.generate(model, PROMPT, 20, greedy=True, compile=True), eager)


def test_compiled_step_calls_the_batched_products_as_one_operator(monkeypatch):
    """On a CPU in fp32, compile=True keeps quantize.gemv's products: each linear layer and the tied head reach the
    graph as one nanoelm::gemv call that the compiler leaves as it is (traced through, its layout is rewritten and
    the step runs at half the eager speed), with the same tokens as the eager decoder."""
    model = tiny_elm(0, vocab_size=64).float()  # a vocabulary that splits into blocks (61 is prime: F.linear)
    eager = sample.generate(model, PROMPT, 8, greedy=True)
    graphs = []

    def record(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward
    monkeypatch.setitem(sample._compiled, "cpu", torch.compile(sample.decode_step, backend=record, fullgraph=True))
    for _ in range(2):  # a second generate reuses the graph
        assert torch.equal(sample.generate(model, PROMPT, 8, greedy=True, compile=True), eager)
    assert len(graphs) == 1
    assert graphs[0].count("nanoelm.gemv.default") == 4 * model.config.n_layer + 1  # qkv, out, gate_up, down; head
    assert not any("bmm" in op or "linear" in op for op in graphs[0])


def test_a_draft_with_a_shorter_context_caps_the_tokens():
    """The draft model runs over every token too: a draft whose context is shorter than the target's caps the new
    tokens at its context (with a note, as the target's own context does), not an index error mid-way."""
    model, draft = tiny_llama(0), tiny_llama(3, n_layer=1, block_size=24)
    out = sample.generate(model, PROMPT, 60, greedy=True, assistant_model=draft, num_assistant_tokens=5)
    assert out.shape[1] == 24 and torch.equal(out, sample.generate(model, PROMPT, 24 - PROMPT.shape[1], greedy=True))
