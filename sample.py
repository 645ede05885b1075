"""
Generation from our checkpoints and imported Hugging Face ones: a static KV cache (prefill in one forward,
then one token per step, optionally compiled), Hugging Face's sampling controls, speculative decoding
(prompt lookup or a draft model) and the Open-Instruct chat format.

    python sample.py --init_from=out/elm_tiny --start="def main(" --max_new_tokens=100
    python sample.py --init_from=out/elm_tiny --start=FILE:prompt.py --prompt_lookup_num_tokens=10 --greedy=True
    python sample.py --init_from=hf/OpenELM-1_1B-Instruct --assistant_model=hf/OpenELM-270M-Instruct --chat=True

Speculative decoding in one paragraph (Leviathan et al. 2023, Chen et al. 2023): a cheap proposer guesses n
tokens d_1..d_n with probabilities q; the target scores all of them in ONE forward, giving its distributions
p_1..p_{n+1}. Draft d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection we draw
from the residual max(p_i - q_i, 0) (renormalised) and stop; if all n survive we draw a bonus token from
p_{n+1}. Every emitted token is then distributed exactly as p. Prompt lookup is the same rule with a
deterministic proposer (q one-hot), and greedy decoding is the same rule with p one-hot, so a single
accept() serves all four combinations and greedy output is token-for-token that of plain greedy decoding.
"""
import contextlib
import sys
import time

import torch
from torch.nn import functional as F

import configurator
import quantize
from configurator import InputError
from tokenizer import encode_chat

# ----------------------------------------------------------------------------- settings
init_from = "out/elm_tiny"  # one of our run or checkpoint directories, or a Hugging Face directory
tokenizer = ""  # "" = the checkpoint's; else a tokenizer.model file or a data directory holding one
start = "\n"  # the prompt, or FILE:path to read it from a file
each_line = False  # with FILE:, one prompt per line, generated together as one left-padded batch
num_samples = 1  # samples per prompt
max_new_tokens = 200
temperature = 0.8  # 0 = greedy
top_k = 200  # keep the k most likely tokens; 0 = off
top_p = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability; 1.0 = off
repetition_penalty = 1.0  # >1 discourages tokens already in the sequence (CTRL / Hugging Face semantics)
greedy = False  # always take the most likely token
seed = 1337
stop = ()  # stop at any of these strings, e.g. ("\n\n",); generation always stops at EOS
prompt_lookup_num_tokens = 0  # >0: prompt-lookup speculative decoding, proposing up to this many tokens
max_matching_ngram_size = 3  # longest n-gram prompt lookup matches
assistant_model = ""  # a smaller model with the same tokenizer: draft-model speculative decoding
num_assistant_tokens = 5  # tokens the draft proposes per target forward (gamma)
chat = False  # wrap the prompt in the Open-Instruct chat template; a conversation when stdin is a terminal
compile = False  # torch.compile the one-token decode step (CUDA graphs on a GPU); on a CPU 1.5x faster once
# compiled, but compiling takes 4-20 s: it pays off over thousands of tokens, not one short sample
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "auto"  # auto = bfloat16 on a GPU, float32 on a CPU; or float32 | bfloat16 | float16
int8 = False  # weight-only int8 linear layers (quantize.py): a quarter of fp32's weight bytes per token


# ----------------------------------------------------------------------------- the distribution we draw from

def process_logits(logits, seen=None, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0):
    """logits (N, V) -> float32 logits, in Hugging Face's order: repetition penalty, temperature, top-k,
    top-p. seen (N, V) bool marks tokens already in the sequence (the penalty's target)."""
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:  # shrink toward 0 from either side (CTRL, Keskar 2019)
        logits = torch.where(seen, torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty), logits)
    if temperature not in (0, 1):
        logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
        drop[:, 0] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def mark_seen(seen, ids, weight=None):
    """seen (N, V) bool | ids (N, L): a count-then-compare, because a bool scatter with repeated ids and
    mixed values (padding) is nondeterministic. weight (N, L) {0, 1} leaves some ids (padding) unmarked."""
    weight = torch.ones_like(ids) if weight is None else weight.long()
    return seen.long().scatter_add(1, ids, weight) > 0


def sample(probs, generator=None):
    """One token per row of probs (N, V): the cumulative distribution inverted at one uniform number in (0, total],
    in float64: the first token whose cumulative sum reaches it, so one of probability 0 is never drawn (not even
    at either end of the interval). torch.multinomial draws the same distribution with a random number per
    element: 190 us for a row of 8192 on a CPU, against 17 here. MPS has no float64: multinomial."""
    if probs.device.type == "mps":
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = probs.double().cumsum(-1)
    u = 1 - torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64, device=probs.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)


def accept(p, q, draft, generator=None):
    """The speculative sampling rule. p (n+1, V): the target's distributions at the n drafts and one past
    them; q (n, V): the proposer's; draft (n,). Returns the tokens to append: the accepted prefix of draft
    plus one token drawn from the target (a correction at the first rejection, else a bonus)."""
    n = draft.numel()
    px, qx = p[:n].gather(1, draft[:, None])[:, 0], q.gather(1, draft[:, None])[:, 0]
    r = torch.rand(n, device=p.device, generator=generator)
    rejected = (r * qx >= px).nonzero()  # keep d_i with probability min(1, px / qx)
    if len(rejected) == 0:
        return torch.cat([draft, sample(p[n:], generator)])
    i = int(rejected[0])
    residual = (p[i] - q[i]).clamp(min=0)  # what p has that q over-proposed: sums to > 0 whenever we reject
    return torch.cat([draft[:i], sample((residual / residual.sum())[None], generator)])


# ----------------------------------------------------------------------------- decoding

def decode_step(model, x, input_pos, left_pad):  # compiled as a whole when compile=True
    return model(x, input_pos=input_pos, left_pad=left_pad)[:, -1]


_compiled = {}


def _step_fn(compile, model):
    device = model.tok_embeddings.weight.device.type
    if not compile:
        return decode_step
    if device not in _compiled:  # one compiled step per device type; dynamo guards handle new models
        mode = "reduce-overhead" if device == "cuda" else "default"  # reduce-overhead = CUDA graphs
        _compiled[device] = torch.compile(decode_step, mode=mode, fullgraph=True)
    gemv = quantize.gemv_pays(model) and not any(isinstance(m, quantize.Int8Linear) for m in model.modules())
    if device != "cpu" or gemv:  # fp32 linear layers on a CPU: the graph calls quantize.gemv's products
        return _compiled[device]
    from torch._inductor import config as inductor_config

    def frozen(*args):  # other CPU weights: fold them in as constants so inductor prepacks them for oneDNN
        with inductor_config.patch(freezing=True):  # (~1.4x); scoped, so other compiles are unaffected
            return _compiled[device](*args)
    return frozen


def _ensure_cache(model, batch_size, length):
    """Reuse the cache when it fits (stale slots are masked), so a compiled step keeps its graphs."""
    cache, p = model.layers[0].attn.kv_cache, model.tok_embeddings.weight
    if (cache is None or cache.k.shape[0] != batch_size or cache.k.shape[2] < length or cache.k.dtype != p.dtype
            or cache.k.device != p.device):
        model.setup_cache(batch_size, min(model.config.block_size, -(-length // 64) * 64))


def pad_left(seqs, pad_id=0):
    """A batch of prompts of different lengths -> (idx (B, T), attention_mask (B, T)), padded on the left."""
    T = max(len(s) for s in seqs)
    idx = torch.tensor([[pad_id] * (T - len(s)) + list(s) for s in seqs], dtype=torch.long)
    return idx, torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)


def prompt_lookup(seq, k, max_ngram=3):
    """Propose up to k tokens: find the latest earlier occurrence of the sequence's last n tokens
    (n = max_ngram down to 1) and copy what followed it (Saxena 2023, prompt-lookup decoding)."""
    L = seq.numel()
    for n in range(min(max_ngram, L - 1), 0, -1):
        windows = seq.unfold(0, n, 1)[:-1]  # (L - n, n): every earlier n-gram, not the tail itself
        hits = (windows == seq[-n:]).all(1).nonzero()[:, 0]
        if len(hits):
            start = int(hits[-1]) + n
            return seq[start:start + k]
    return seq[:0]


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
             greedy=False, prompt_lookup_num_tokens=None, max_matching_ngram_size=3, assistant_model=None,
             num_assistant_tokens=5, eos_token_id=None, attention_mask=None, generator=None, callback=None,
             compile=False, stats=None):
    """idx (B, T) prompt ids, left-padded when attention_mask (B, T) has zeros (see pad_left). Returns
    (B, T + new) ids: the prompt and what followed; a row that met EOS is filled with EOS after it.
    callback(new (B, n)) sees tokens as they are produced and stops generation by returning True.
    stats, a dict, receives new_tokens, seconds, tokens_per_s and, when speculating, proposed/accepted."""
    B, T = idx.shape
    (block, V), context = (model.config.block_size, model.config.vocab_size), "the model's context"
    if assistant_model is not None and assistant_model.config.block_size < block:  # the draft runs over every token too
        block, context = assistant_model.config.block_size, "the assistant model's context"
    for name, value, ok, rule in (
            ("max_new_tokens", max_new_tokens, max_new_tokens >= 0, ">= 0"),
            ("temperature", temperature, temperature >= 0, ">= 0 (0 is greedy)"),
            ("top_k", top_k, top_k is None or top_k >= 0, ">= 0 (0 is off)"),
            ("top_p", top_p, top_p is None or 0 <= top_p <= 1, "in [0, 1] (1 is off, 0 keeps the most likely token)"),
            ("repetition_penalty", repetition_penalty, repetition_penalty > 0, "> 0 (1 is off)"),
            ("prompt_lookup_num_tokens", prompt_lookup_num_tokens, (prompt_lookup_num_tokens or 0) >= 0, ">= 0"),
            ("max_matching_ngram_size", max_matching_ngram_size, max_matching_ngram_size >= 1, ">= 1"),
            ("num_assistant_tokens", num_assistant_tokens, num_assistant_tokens >= 1, ">= 1")):
        if not ok:  # Hugging Face's generate refuses these too; a negative temperature would invert the distribution
            raise InputError(f"{name}={value!r} must be {rule}")
    if T == 0:
        raise InputError("the prompt is empty: give at least one token (sample.py's prompts start with BOS)")
    if T >= block:
        raise InputError(f"the prompt has {T} tokens but {context} is {block}: shorten it")
    if T + max_new_tokens > block:
        print(f"note: max_new_tokens cut from {max_new_tokens} to {block - T} to fit {context} of {block}", file=sys.stderr)
        max_new_tokens = block - T
    speculate = bool(prompt_lookup_num_tokens) or assistant_model is not None
    if prompt_lookup_num_tokens and assistant_model is not None:
        raise InputError("prompt_lookup_num_tokens and assistant_model are two ways of proposing drafts: give one")
    if speculate and B != 1:
        raise InputError(f"speculative decoding runs one sequence at a time, got a batch of {B}: loop over prompts")
    if assistant_model is not None and assistant_model.config.vocab_size != V:
        raise InputError(f"the assistant model's vocabulary ({assistant_model.config.vocab_size}) differs from the "
                         f"target's ({V}): the draft must share the target's tokenizer")
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []), device=idx.device)
    greedy = greedy or temperature == 0
    warp = dict(temperature=1.0 if greedy else temperature, top_k=None if greedy else top_k,
                top_p=None if greedy else top_p, repetition_penalty=repetition_penalty)

    def probs(logits, seen):  # greedy is drawing from the one-hot of the argmax: accept() needs nothing else
        logits = process_logits(logits, seen, **warp)
        return F.one_hot(logits.argmax(-1), V).float() if greedy else logits.softmax(-1)

    def pick(logits, seen):  # the same draw without the detour (and without a host sync on a GPU)
        return process_logits(logits, seen, **warp).argmax(-1) if greedy else sample(probs(logits, seen), generator)

    mask = torch.ones_like(idx) if attention_mask is None else attention_mask.to(idx.device).long()
    left_pad = (mask == 0).sum(1)
    if not torch.equal(mask, (torch.arange(T, device=idx.device) >= left_pad[:, None]).long()):
        raise InputError("attention_mask must be zeros then ones in every row (left padding): use sample.pad_left")
    seen = mark_seen(torch.zeros(B, V, dtype=torch.bool, device=idx.device), idx, mask) if repetition_penalty != 1.0 else None
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    sync = torch.cuda.synchronize if idx.is_cuda else (lambda: None)
    t0 = time.perf_counter()
    for m in (model, assistant_model):
        if m is not None:
            _ensure_cache(m, B, T + max_new_tokens)
    # inference mode: no autograd bookkeeping in any op, which a decode step's hundreds of small ops feel (about
    # a sixth of a small model's CPU step). What the caller keeps (the caches, out, and the views of out that
    # callbacks see) is made outside it, so it stays ordinary tensors that autograd and in-place ops accept
    with contextlib.ExitStack() as weights, torch.inference_mode():
        for m in (model, assistant_model):  # on a CPU, fp32 linear layers as batched matrix-vector products
            if m is not None:
                weights.enter_context(quantize.gemv(m))
        if speculate:
            L, proposed, accepted = _speculate(model, out, T, max_new_tokens, probs, seen, prompt_lookup_num_tokens,
                                               max_matching_ngram_size, assistant_model, num_assistant_tokens,
                                               eos, generator, callback)
        else:
            L = _decode(model, out, T, max_new_tokens, pick, seen, left_pad if attention_mask is not None else None,
                        eos, callback, _step_fn(compile, model))
        sync()
    dt = time.perf_counter() - t0
    if stats is not None:
        stats.update(new_tokens=B * (L - T), seconds=dt, tokens_per_s=B * (L - T) / dt)
        if speculate:
            stats.update(proposed=proposed, accepted=accepted, acceptance_rate=accepted / max(proposed, 1))
    return out[:, :L]


def _decode(model, out, T, max_new, pick, seen, left_pad, eos, callback, step):
    """Plain decoding of a (left-padded) batch: prefill the prompt in one forward, then a token per step."""
    B, V = out.shape[0], model.config.vocab_size
    logits = model(out[:, :T], input_pos=torch.arange(T, device=out.device), left_pad=left_pad)[:, -1]
    done = torch.zeros(B, dtype=torch.bool, device=out.device)
    for i in range(max_new):
        tok = pick(logits, seen)
        if len(eos):  # a finished row keeps emitting EOS, so the batch stays rectangular
            tok = torch.where(done, eos[0], tok)
            done |= torch.isin(tok, eos)
        out[:, T + i] = tok
        if seen is not None:
            seen = seen | F.one_hot(tok, V).bool()
        if (callback is not None and callback(out[:, T + i:T + i + 1])) or (len(eos) and bool(done.all())):
            return T + i + 1
        if i + 1 < max_new:
            logits = step(model, tok[:, None], torch.tensor([T + i], device=out.device), left_pad).clone()
    return T + max_new


def _speculate(model, out, T, max_new, probs, seen, k_lookup, max_ngram, draft_model, gamma, eos, generator, callback):
    """Speculative decoding of one sequence. Each model remembers how many tokens of out it has cached
    (t_cached, d_cached) and feeds the rest at the next call; tokens it saw that were later rejected are
    simply overwritten, because the cache masks every slot past the current position (the rewind)."""
    V, dev = model.config.vocab_size, out.device
    L, t_cached, d_cached, proposed, accepted = T, 0, 0, 0, 0
    while L < T + max_new:
        room = T + max_new - L - 1  # the round always adds one token of the target's own beyond the drafts
        if draft_model is not None:  # the draft proposes autoregressively, remembering its q
            n = min(gamma, room)
            x, drafts, qs, s = out[:, d_cached:L], [], [], seen
            for j in range(n):
                logits = draft_model(x, input_pos=torch.arange(L + j - x.shape[1], L + j, device=dev))[:, -1]
                qs.append(probs(logits, s))
                drafts.append(sample(qs[-1], generator))
                x = drafts[-1][None]
                s = s if s is None else mark_seen(s, x)
            draft = torch.cat(drafts) if n else out[0, :0]
            q = torch.cat(qs) if n else torch.empty(0, V, device=dev)
            d_cached = L + n - 1 if n else d_cached
        else:  # prompt lookup proposes deterministically: q is one-hot
            draft = prompt_lookup(out[0, :L], min(k_lookup, room), max_ngram)
            q = F.one_hot(draft, V).float()
        n = draft.numel()
        # verify: one target forward over the uncached tokens and all drafts gives p for every position
        x = torch.cat([out[0, t_cached:L], draft])[None]
        logits = model(x, input_pos=torch.arange(t_cached, L + n, device=dev))[0, -(n + 1):]
        s = seen
        if seen is not None:  # position j sees the drafts before it
            s = mark_seen(seen.expand(n + 1, V), draft.expand(n + 1, n), torch.ones(n + 1, n, device=dev).tril(-1))
        new = accept(probs(logits, s), q, draft, generator)
        if len(eos) and torch.isin(new, eos).any():
            new = new[:int(torch.isin(new, eos).nonzero()[0]) + 1]
        out[0, L:L + len(new)] = new
        proposed, accepted = proposed + n, accepted + min(len(new) - 1, n)
        L += len(new)
        t_cached, d_cached = L - 1, min(d_cached, L - 1)  # the rewind: nothing past the accepted prefix counts
        if seen is not None:
            seen = mark_seen(seen, new[None])
        if (callback is not None and callback(out[:, L - len(new):L])) or \
                (len(eos) and bool(torch.isin(new, eos).any())):
            break
    return L, proposed, accepted


# ----------------------------------------------------------------------------- command line

def streamer(tok, prompt, stops):
    """A callback printing the new text as it grows, cut at the first stop string (which ends the run)."""
    base, ids, shown = tok.decode(prompt), list(prompt), [0]

    def callback(new):
        ids.extend(new[0].tolist())
        text = tok.decode(ids)[len(base):]
        cut = min([text.find(s) for s in stops if s in text] or [len(text)])
        end = cut if cut < len(text) else len(text.rstrip("\ufffd"))  # hold back half a UTF-8 character
        print(text[shown[0]:end], end="", flush=True)
        shown[0] = max(shown[0], end)
        return cut < len(text)
    return callback


def finish(tok, new, stops=()):
    """New ids -> text, cut at EOS and at the first of the stop strings."""
    text = tok.decode(new[:new.index(tok.eos_id)] if tok.eos_id in new else new)
    return text[:min([text.find(s) for s in stops if s in text] or [len(text)])]


def complete(model, tok, prompt, controls, echo=""):
    """Generate for one prompt (a list of ids), streaming after `echo`; returns the new text. The echo waits for the
    first new token (or the end), so a prompt that generate() refuses is not printed before its error."""
    idx, pending, stream = torch.tensor([prompt], device=device), [echo], streamer(tok, prompt, stop)

    def echo_once():
        while pending:
            print(pending.pop(), end="", flush=True)

    def callback(new):
        echo_once()
        return stream(new)
    new = generate(model, idx, callback=callback, **controls)[0, len(prompt):].tolist()
    echo_once()  # when no token came
    return finish(tok, new, stop)


def main(argv):
    global device
    configurator.print_settings(configurator.configure(globals(), argv), file=sys.stderr)
    import checkpoint
    if not 0 <= seed < 2 ** 63:
        raise InputError(f"seed={seed} must be in [0, 2**63)")
    torch.manual_seed(seed)
    device = configurator.check_device(device)
    if num_samples < 1:
        raise InputError(f"num_samples={num_samples} must be at least 1")
    if not all(isinstance(s, str) and s for s in stop):
        raise InputError(f"stop={stop!r}: give a tuple of non-empty strings, e.g. --stop='(\"\\n\\n\",)'")
    ptdtype = configurator.torch_dtype(dtype, auto=torch.bfloat16 if "cuda" in device else torch.float32)
    model, tok = checkpoint.load_model(init_from, device, ptdtype, tokenizer=tokenizer, need_tokenizer=True)
    if int8:
        import quantize
        quantize.int8(model)
    draft = None
    if assistant_model:  # its own tokenizer, if it has one, must be the target's
        draft, draft_tok = checkpoint.load_model(assistant_model, device=device, dtype=ptdtype)
        if draft.config.vocab_size != model.config.vocab_size or (draft_tok and draft_tok.vocab_size != tok.vocab_size):
            raise InputError(f"the assistant {assistant_model} has a vocabulary of {draft.config.vocab_size} and the "
                             f"target {model.config.vocab_size}: the draft must share the target's tokenizer")
    for ignored, why in ((compile and (draft is not None or prompt_lookup_num_tokens), "--compile=True compiles plain "
                          "decoding only: speculative decoding runs without it"),
                         (chat and each_line, "--chat=True takes one message: --each_line is ignored"),
                         (chat and num_samples > 1, "--chat=True answers each message once: --num_samples is ignored")):
        if ignored:
            print(f"note: {why}", file=sys.stderr)
    stats = {}
    controls = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k or None, top_p=top_p,
                    repetition_penalty=repetition_penalty, greedy=greedy, prompt_lookup_num_tokens=prompt_lookup_num_tokens,
                    max_matching_ngram_size=max_matching_ngram_size, assistant_model=draft,
                    num_assistant_tokens=num_assistant_tokens, eos_token_id=tok.eos_id, compile=compile, stats=stats)
    text = start
    if text.startswith("FILE:"):
        try:
            text = open(text[5:], encoding="utf-8").read()
        except OSError as e:
            raise InputError(f"cannot read the prompt file {text[5:]}: {e.strerror}")
        except UnicodeDecodeError as e:
            raise InputError(f"the prompt file {text[5:]} is not UTF-8 text ({e.reason} at byte {e.start})")
    prompts = [line for line in text.splitlines() if line.strip()] if each_line else [text]
    if not prompts:
        raise InputError(f"--each_line=True found no prompt lines in {start[5:] if start.startswith('FILE:') else '--start'}: "
                         f"give one prompt per line")
    encoded = [] if chat else [tok.encode(p, bos=True) for p in prompts]  # once, and checked before any is run
    long = next((i for i, ids in enumerate(encoded) if len(ids) >= model.config.block_size), None)
    if each_line and long is not None:  # generate would name the batch's longest prompt, not its line
        raise InputError(f"prompt line {long + 1} (blank lines not counted) has {len(encoded[long])} tokens but the "
                         f"model's context is {model.config.block_size}: shorten it")
    if chat:  # a conversation: the reply streams, then the next user turn (only when a person is typing)
        # encode_chat tokenized the finetuning data too: prompts match it token for token
        messages, message = [], text.strip() or (None if sys.stdin.isatty() else "")
        if message == "":
            raise InputError(f"the prompt file {start[5:]} holds no message" if start.startswith("FILE:") else
                             "chat mode without a terminal needs the message: --start='...' or --start=FILE:path")
        while True:
            while message is None or not message.strip():
                try:
                    message = input("user> ")
                except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C ends the conversation
                    print()
                    return
            messages.append(("user", message))
            ids = encode_chat(tok, messages, add_generation_prompt=True)[0]
            while len(ids) + 16 > model.config.block_size and len(messages) > 1:  # forget the oldest turns
                messages = messages[2:]
                ids = encode_chat(tok, messages, add_generation_prompt=True)[0]
            messages.append(("assistant", complete(model, tok, ids, controls, echo="assistant> ")))
            print(f"\n[{stats['new_tokens']} tokens, {stats['tokens_per_s']:.1f} tokens/s]", file=sys.stderr)
            if not sys.stdin.isatty():
                return
            message = None
    elif draft is not None or prompt_lookup_num_tokens or len(prompts) * num_samples == 1:
        total, seconds, proposed, accepted = 0, 0.0, 0, 0  # one sequence at a time, streamed
        for prompt, ids in zip(prompts, encoded):
            for _ in range(num_samples):
                complete(model, tok, ids, controls, echo=prompt)
                print("\n---------------", flush=True)
                total, seconds = total + stats["new_tokens"], seconds + stats["seconds"]
                proposed, accepted = proposed + stats.get("proposed", 0), accepted + stats.get("accepted", 0)
        spec = f", {accepted}/{proposed} drafted tokens accepted ({accepted / max(proposed, 1):.0%})" \
            if draft is not None or prompt_lookup_num_tokens else ""
        print(f"{total} tokens in {seconds:.2f}s: {total / seconds:.1f} tokens/s{spec}", file=sys.stderr)
    else:  # many sequences: one left-padded batch, printed at the end
        batch = [ids for ids in encoded for _ in range(num_samples)]
        idx, mask = pad_left(batch, tok.pad_id or 0)
        out = generate(model, idx.to(device), attention_mask=mask.to(device), **controls)
        for row, ids in zip(out.tolist(), batch):
            print(tok.decode(ids[1:]) + finish(tok, row[idx.shape[1]:], stop) + "\n---------------")
        print(f"{stats['new_tokens']} tokens in {stats['seconds']:.2f}s: {stats['tokens_per_s']:.1f} tokens/s "
              f"(batch of {len(batch)})", file=sys.stderr)


if __name__ == "__main__":
    configurator.main(main, sys.argv[1:])
