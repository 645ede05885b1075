"""
Tokenizers and the chat template: the text <-> ids of every script.

    Tokenizer("path/tokenizer.model")   SentencePiece (LLaMA, OpenLLaMA, OpenELM's Llama-2 tokenizer, ours)
    Tokenizer("path/tokenizer.json")    a Hugging Face `tokenizers` file (Llama-3 and most current Hub models, and
                                        mlx-lm's converted folders), special tokens from tokenizer_config.json beside it
    Tokenizer("tiktoken:gpt2")          a tiktoken encoding
    Tokenizer("path/")                  the folder's tokenizer.model, else its tokenizer.json
    encode_chat(tok, messages)          (ids, trained-target mask) of a conversation in the Open-Instruct template

Every tokenizer has the same interface: encode(text, bos=, eos=), decode(ids), vocab_size, bos_id, eos_id, pad_id;
files lists what makes it up, for copying it along with data and checkpoints.
"""
import json
import os

from configurator import InputError
from files import read_json

# special tokens looked for in a tokenizer.json that comes without a tokenizer_config.json naming them
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>")
PAD_NAMES = ("<pad>", "<|pad|>", "<|finetune_right_pad_id|>")


FILES = ("tokenizer.model", "tokenizer.json")  # a folder's tokenizer: SentencePiece first, as LLaMA's and OpenELM's


def tokenizer_file(folder):
    """The tokenizer file of a folder: the first of FILES that it holds (the SentencePiece path if none)."""
    return next((os.path.join(folder, f) for f in FILES if os.path.isfile(os.path.join(folder, f))),
                os.path.join(folder, FILES[0]))


class Tokenizer:
    """One interface over a SentencePiece model file, a Hugging Face tokenizer.json and a tiktoken encoding."""

    def __init__(self, spec):
        self.spec = str(spec)
        if self.spec.startswith("tiktoken:"):
            self.kind, self.name, self.files = "tiktoken", self.spec, []
            self._enc = _tiktoken_encoding(self.spec.split(":", 1)[1])
            self.vocab_size = self._enc.n_vocab
            self.bos_id = self.eos_id = self._enc.eot_token  # tiktoken's one special token, <|endoftext|>, is both
            self.pad_id = None
            return
        path = self.spec
        if os.path.isdir(path):
            path = tokenizer_file(path)
        if not os.path.isfile(path):
            raise InputError(f"tokenizer file {path!r} not found: give a SentencePiece .model file, a tokenizer.json, "
                             "a folder holding one or 'tiktoken:<encoding>' (sample.py and eval.py take a prepared data "
                             "folder too); or leave --tokenizer empty: the checkpoint's, or in prepare.py a trained one")
        self.name, self.files = path, [path]
        (self._open_json if path.endswith(".json") else self._open_sentencepiece)(path)

    def _open_sentencepiece(self, path):
        import sentencepiece as spm
        try:
            self._sp = spm.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as e:
            raise InputError(f"{path} is not a SentencePiece model ({e}): give a tokenizer.model file")
        self.kind = "sentencepiece"
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else None  # LLaMA's has none (-1)

    def _open_json(self, path):
        try:
            from tokenizers import Tokenizer as Fast
        except ImportError:
            raise InputError(f"reading {path} needs the tokenizers package: pip install tokenizers")
        try:
            self._fast = Fast.from_file(path)
        except Exception as e:  # the Rust side raises plain Exceptions for every malformed file
            raise InputError(f"{path} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:200]}): "
                             "download it again")
        self.kind, self.vocab_size = "tokenizers", self._fast.get_vocab_size(with_added_tokens=True)
        config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        named = {}
        if os.path.isfile(config):  # transformers keeps the special tokens' roles here, not in tokenizer.json
            self.files.append(config)
            named = read_json(config, "download it again")

        def token_id(key, guesses):
            t = named.get(key)
            t = t.get("content") if isinstance(t, dict) else t
            return next((self._fast.token_to_id(n) for n in ([t] if t else guesses) if self._fast.token_to_id(n) is not None), None)
        self.eos_id = token_id("eos_token", EOS_NAMES)
        if self.eos_id is None:
            raise InputError(f"{path} names no end-of-text token (no tokenizer_config.json with eos_token beside it, "
                             f"and none of {', '.join(EOS_NAMES)}): add a tokenizer_config.json with its eos_token")
        bos = token_id("bos_token", BOS_NAMES)
        self.bos_id = self.eos_id if bos is None else bos  # no BOS (GPT-2, Qwen): documents start after an EOS
        self.pad_id = token_id("pad_token", PAD_NAMES)

    def encode(self, text, bos=False, eos=False, continuation=False):
        """continuation=True: the text continues a sequence already begun (a chat turn after the first), so no
        dummy-prefix space is added: LLaMA's SentencePiece puts a "▁" before the text of every encode call."""
        if self.kind == "tiktoken":
            ids = self._enc.encode_ordinary(text)
        elif self.kind == "tokenizers":
            ids = (self._json_continuation() if continuation else self._fast).encode(text, add_special_tokens=False).ids
        else:
            ids = (self._continuation() if continuation else self._sp).encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def _continuation(self):
        if not hasattr(self, "_sp_cont") and not self._sp.id_to_piece(self._sp.encode("a")[0]).startswith("▁"):
            self._sp_cont = self._sp  # no dummy prefix to begin with (ours)
        if not hasattr(self, "_sp_cont"):  # the same model with add_dummy_prefix off
            import sentencepiece as spm
            try:
                from sentencepiece import sentencepiece_model_pb2
            except ImportError:
                raise InputError("encoding chat turns with this tokenizer needs protobuf: pip install protobuf")
            proto = sentencepiece_model_pb2.ModelProto.FromString(self._sp.serialized_model_proto())
            proto.normalizer_spec.add_dummy_prefix = False
            self._sp_cont = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        return self._sp_cont

    def _json_continuation(self):
        """The same tokenizer without the space it puts before a text: Llama-2-style files prepend "▁" (a Prepend
        normalizer, or Metaspace with prepend_scheme "first"/"always"), byte-level ones may add_prefix_space."""
        if not hasattr(self, "_fast_cont"):
            from tokenizers import Tokenizer as Fast

            def strip(node):
                if isinstance(node, list):
                    return [strip(n) for n in node if not (isinstance(n, dict) and n.get("type") == "Prepend")]
                if not isinstance(node, dict):
                    return node
                if node.get("type") == "Metaspace":
                    node = {**node, "prepend_scheme": "never", **({"add_prefix_space": False} if "add_prefix_space" in node else {})}
                elif node.get("type") == "ByteLevel" and node.get("add_prefix_space"):
                    node = {**node, "add_prefix_space": False}
                return {k: strip(v) for k, v in node.items()}
            d = json.loads(self._fast.to_str())
            for part in ("normalizer", "pre_tokenizer"):
                d[part] = None if isinstance(d.get(part), dict) and d[part].get("type") == "Prepend" else strip(d.get(part))
            self._fast_cont = Fast.from_str(json.dumps(d))
        return self._fast_cont

    def decode(self, ids):
        ids = [int(i) for i in ids]  # numpy and torch integers in, plain ints out
        if self.kind == "sentencepiece":
            return self._sp.decode(ids)
        return self._fast.decode(ids, skip_special_tokens=False) if self.kind == "tokenizers" else self._enc.decode(ids)

    def __reduce__(self):  # pickles as its spec, so DataLoader and Pool workers can take one
        return Tokenizer, (self.spec,)


PROBE = "def f(x):\n    return x + 1  # The quick brown fox jumps over the lazy dog, 1999."


def same_tokenizer(a, b):
    """Whether two tokenizers are one: the same size and the same ids for a probe of code and prose. Two BPEs
    trained on different text split such a line differently, so data made with another tokenizer of the same size
    shows here instead of as a model that learns or scores the wrong pieces. ASCII only: one vocabulary read by two
    implementations (a tokenizer.model and its tokenizer.json) may treat rare characters differently."""
    return a.vocab_size == b.vocab_size and a.encode(PROBE) == b.encode(PROBE)


def fits(n_tokens, vocab_size):
    """Whether a tokenizer of n_tokens belongs with a model of vocab_size embedding rows. Embeddings are often
    padded a little past the tokenizer (CoreNet's 32128 rows for Llama-2's 32000 pieces, a multiple of 64 for
    speed); fewer rows than tokens, or many more, means another model's tokenizer."""
    return 0 <= vocab_size - n_tokens <= 128


def _tiktoken_encoding(enc_name):
    try:
        import tiktoken
    except ImportError:
        raise InputError(f"tokenizer 'tiktoken:{enc_name}' needs the tiktoken package: pip install tiktoken")
    if enc_name not in tiktoken.list_encoding_names():
        raise InputError(f"unknown tiktoken encoding {enc_name!r}: use one of {tiktoken.list_encoding_names()}")
    try:
        return tiktoken.get_encoding(enc_name)
    except Exception as e:  # requests' ConnectionError, an HTTP error, a bad cache: all mean "could not get the files"
        raise InputError(f"tiktoken could not fetch the BPE files of {enc_name!r} ({type(e).__name__}; this machine "
                         "may be offline): copy tiktoken's cache from a connected machine and point "
                         "TIKTOKEN_CACHE_DIR at it")



# -----------------------------------------------------------------------------
# chat: the Open-Instruct (Tulu) template, the one tokenization shared by training data and sample.py's prompts
_ROLES = ("system", "user", "assistant")


def turns(messages, where="chat"):
    """[(role, content)] from {"role", "content"} dicts or (role, content) pairs, checked."""
    turns = []
    for j, m in enumerate(messages):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else \
            tuple(m) if isinstance(m, (list, tuple)) and len(m) == 2 else (None, None)
        if role not in _ROLES:
            raise InputError(f"{where}, message {j}: role {role!r} is not system, user or assistant: fix the data")
        if not isinstance(content, str):
            raise InputError(f"{where}, message {j}: content is {type(content).__name__}, not a string: fix the data")
        turns.append((role, content))
    return turns


def _segments(messages, add_generation_prompt, where="chat"):
    """The template as (text, trained) pieces, text None for EOS. Each piece is tokenized on its own, so the mask
    boundary is exact and a conversation's prefix tokenizes as the prompt that asks for its next reply. The "\\n"
    after an EOS opens the next piece: the reply's last target is the EOS, which ends generation."""
    pieces, nl = [], ""
    for role, content in turns(messages, where):
        if role == "assistant":
            pieces += [(nl + "<|assistant|>\n", False), (content.strip(), True), (None, True)]
        else:
            pieces.append((f"{nl}<|{role}|>\n{content.strip()}\n", False))
        nl = "\n" if role == "assistant" else ""
    if add_generation_prompt:
        pieces.append((nl + "<|assistant|>\n", False))
    elif nl:
        pieces.append((nl, False))
    return pieces


def chat_text(messages, eos="</s>", add_generation_prompt=False):
    """The template as text: "<|user|>\\n{msg}\\n<|assistant|>\\n{reply}</s>\\n..." (for display and tests)."""
    return "".join(eos if t is None else t for t, _ in _segments(messages, add_generation_prompt))


def encode_chat(tok, messages, add_generation_prompt=False, where="chat"):
    """(ids, mask) of a conversation: BOS, then the template piece by piece, each assistant turn ending in the real EOS
    id (SentencePiece would spell "</s>" out as text). mask[t] is True where token t is a trained target: the
    assistant's content and its EOS, never a header. add_generation_prompt ends with the "<|assistant|>\\n" header."""
    ids, mask = [tok.bos_id], [False]
    for text, trained in _segments(messages, add_generation_prompt, where):
        piece = [tok.eos_id] if text is None else tok.encode(text, continuation=len(ids) > 1)
        ids += piece
        mask += [trained] * len(piece)
    return ids, mask

