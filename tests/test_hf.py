"""hf.py against transformers' Llama (built locally, random weights, no network), Meta's format, the Hub's
OpenELM layout and the per-layer shapes of the released configs; plus every bad input's one-line message."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import hf
from model import ModelConfig, Transformer

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from configurator import InputError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [(1, 9), (2, 17), (1, 1)]  # (batch, length)
LLAMAS = {  # multi-head; GQA (4 query heads per kv head); head_dim 20 (not a power of two, as OpenLLaMA-3B's 100)
    "mha": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6),
    "gqa": dict(hidden_size=96, num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5),
    "hd20": dict(hidden_size=100, num_attention_heads=5, num_key_value_heads=5, rms_norm_eps=1e-6),
}


def prompts(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, shape, generator=g) for shape in PROMPTS]


def randomize_norms(model):
    with torch.no_grad():  # norm weights of 1 would hide a swapped or missing norm
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def hf_llama(path, kind="gqa", vocab=200, dtype=torch.float32, rope_theta=50000.0, **save_kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64,
                                   initializer_range=0.1, rope_theta=rope_theta, **LLAMAS[kind])
    m = randomize_norms(transformers.LlamaForCausalLM(cfg)).to(dtype).eval()
    m.save_pretrained(path, **save_kw)
    return m


def hf_logits(m, idx):
    with torch.no_grad():
        return m(idx).logits.float()


def our_logits(m, idx):
    with torch.no_grad():
        out = m(idx)
        return getattr(out, "logits", out).float()  # ours gives logits, transformers an output object


def assert_same(ref, ours, vocab, atol=1e-5, seed=0):
    """Logits equal to atol relative to their largest magnitude (float32 rounding scales with it)."""
    for idx in prompts(vocab, seed):
        a, b = hf_logits(ref, idx), our_logits(ours, idx)
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= atol * scale, ((a - b).abs().max().item(), scale)


# ----------------------------------------------------------------------------- LLaMA in

@pytest.mark.parametrize("kind", list(LLAMAS))
def test_llama_import_fp32_and_bf16(tmp_path, kind):
    ref = hf_llama(tmp_path / "fp32", kind)
    ours = hf.load_model(tmp_path / "fp32")
    assert ours.tok_embeddings.weight.dtype == torch.float32 and ours.config.rope_theta == 50000.0
    assert ours.config.norm_eps == LLAMAS[kind]["rms_norm_eps"]  # eps from config.json, never hard-coded
    assert_same(ref, ours, 200)
    # stored bf16 loads as bf16; HF rotates q/k in bf16 and we in fp32 (as OpenELM does), hence the loose bound
    ref16 = hf_llama(tmp_path / "bf16", kind, dtype=torch.bfloat16)
    ours16 = hf.load_model(tmp_path / "bf16")
    assert ours16.tok_embeddings.weight.dtype == torch.bfloat16
    for idx in prompts(200):
        a, b = hf_logits(ref16, idx), our_logits(ours16, idx)
        assert (a - b).abs().max() < 0.05 * a.abs().max(), ((a - b).abs().max(), a.abs().max())
    # asking for a dtype casts on load
    assert hf.load_model(tmp_path / "bf16", dtype=torch.float32).norm.weight.dtype == torch.float32


def test_sharded_safetensors_and_bin(tmp_path):
    ref = hf_llama(tmp_path / "st", max_shard_size="20KB")
    assert len([f for f in os.listdir(tmp_path / "st") if f.endswith(".safetensors")]) > 2
    assert_same(ref, hf.load_model(tmp_path / "st"), 200)
    # transformers 5 writes safetensors only: write the .bin shards (fp16, as old LLaMA uploads) by hand,
    # with the stale rotary inv_freq buffers that old converters saved
    d = tmp_path / "bin"
    d.mkdir()
    (tmp_path / "st" / "config.json").rename(d / "config.json")
    sd = {k: v.half() for k, v in ref.state_dict().items()}
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    keys, weight_map = list(sd), {}
    for i in range(3):
        name = f"pytorch_model-{i + 1:05d}-of-00003.bin"
        part = {k: sd[k] for k in keys[i::3]}
        torch.save(part, d / name)
        weight_map.update(dict.fromkeys(part, name))
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ours = hf.load_model(d, dtype="float32")
    ref.load_state_dict({k: v.float() for k, v in sd.items() if "inv_freq" not in k})  # not .half(): it rounds RoPE buffers
    assert_same(ref, ours, 200)


# ----------------------------------------------------------------------------- LLaMA out

@pytest.mark.parametrize("tied", [False, True])
def test_llama_export_loads_in_transformers(tmp_path, tied):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=160, block_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=96,
                      norm_eps=1e-5, rope_theta=20000.0, tie_embeddings=tied, init_std=0.1)
    ours = randomize_norms(Transformer(cfg)).eval()
    hf.save_model(ours, tmp_path / "out")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert ref.config.rope_parameters["rope_theta"] == 20000.0 and ref.config.rms_norm_eps == 1e-5
    assert_same(ref, ours, 160)
    assert_same(ref, hf.load_model(tmp_path / "out"), 160)


def test_export_bf16_and_shards(tmp_path):
    ours = Transformer(ModelConfig(vocab_size=160, block_size=64, n_layer=3, n_embd=64, n_head=4, ffn_dim=96))
    hf.save_model(ours, tmp_path / "out", dtype="bfloat16", max_shard_size=30_000)
    files = os.listdir(tmp_path / "out")
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    back = hf.load_model(tmp_path / "out")
    assert back.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(back.lm_head.weight, ours.lm_head.weight.bfloat16())
    hf.save_model(ours, tmp_path / "out")  # re-export into the same folder: no stale shard may survive
    assert sorted(f for f in os.listdir(tmp_path / "out") if "safetensors" in f) == ["model.safetensors"]


# ----------------------------------------------------------------------------- Meta in

def to_meta(w, n_heads):
    """Spec 3.3's inverse permutation: rotate-half rows -> Meta's interleaved rows."""
    hd = w.shape[0] // n_heads
    return w.view(n_heads, 2, hd // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def meta_state(ref):
    c, sd = ref.config, ref.state_dict()
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"], "rope.freqs": torch.ones(4)}  # LLaMA-1 ships rope.freqs
    for i in range(c.num_hidden_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[q + "attention.wq.weight"] = to_meta(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads)
        out[q + "attention.wk.weight"] = to_meta(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads)
        for a, b in [("attention.wv", "self_attn.v_proj"), ("attention.wo", "self_attn.o_proj"),
                     ("feed_forward.w1", "mlp.gate_proj"), ("feed_forward.w3", "mlp.up_proj"),
                     ("feed_forward.w2", "mlp.down_proj"), ("attention_norm", "input_layernorm"),
                     ("ffn_norm", "post_attention_layernorm")]:
            out[q + a + ".weight"] = sd[p + b + ".weight"]
    return out


def test_meta_permutation_matches_interleaved_rope():
    # Meta rotates adjacent pairs as complex numbers; after our un-permutation, rotate-half must give the same
    torch.manual_seed(0)
    H, hd, T = 3, 8, 5
    x, w = torch.randn(T, 16), torch.randn(H * hd, 16)
    m = Transformer(ModelConfig(vocab_size=8, n_layer=1, n_embd=16, n_head=2, head_dim=hd, ffn_dim=8))
    cos, sin = m.rope(torch.arange(T).unsqueeze(0))  # (1, T, hd/2)
    q_meta = torch.view_as_complex((x @ to_meta(w, H).T).view(T, H, hd // 2, 2))  # Meta's apply_rotary_emb
    rot = torch.view_as_real(q_meta * torch.complex(cos[0], sin[0]).unsqueeze(1)).reshape(T, H * hd)
    got = hf._unpermute(rot.T.contiguous(), H).T.reshape(T, H, hd)  # rows of the layout permute like weight rows
    from kernels import rope_eager
    want = rope_eager((x @ w.T).view(1, T, H, hd), cos, sin)[0]  # (T, H, hd)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_consolidated_loads(tmp_path, n_shards, sp_models):
    ref = hf_llama(tmp_path / "hf", "gqa", vocab=300, rope_theta=10000.0)
    sd, d = meta_state(ref), tmp_path / "meta"
    d.mkdir()
    for r in range(n_shards):  # model-parallel pieces: column-parallel split by rows, row-parallel by columns
        part = {}
        for k, v in sd.items():
            dim = hf.META_CAT_DIM.get(k.split(".")[-2] if k.count(".") else k)
            part[k] = v.chunk(n_shards, dim)[r].clone() if dim is not None else v
        torch.save(part, d / f"consolidated.{r:02d}.pth")
    c = ref.config
    (d / "params.json").write_text(json.dumps({"dim": c.hidden_size, "n_layers": c.num_hidden_layers, "vocab_size": -1,
                                               "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads,
                                               "multiple_of": 32, "norm_eps": c.rms_norm_eps}))
    ours = hf.load_model(d)
    assert ours.config.vocab_size == 300 and ours.config.ffn_dim == 96
    assert_same(ref, ours, 300)
    (tmp_path / "tokenizer.model").write_bytes((sp_models / "keep.model").read_bytes())  # Meta's: one folder up
    assert hf.load_tokenizer(d).vocab_size == 300
    if n_shards == 1:  # and the command line converts it to a directory transformers reads
        r = subprocess.run([sys.executable, "export.py", f"--init_from={d}", f"--out={tmp_path / 'conv'}"],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "saved LLaMA model" in r.stdout and "with tokenizer.model" in r.stdout
        assert_same(ref, transformers.LlamaForCausalLM.from_pretrained(tmp_path / "conv").eval(), 300)


# ----------------------------------------------------------------------------- OpenELM

ELM = dict(vocab_size=256, block_size=64, n_layer=4, n_embd=128, head_dim=16, qkv_multipliers=(0.5, 1.0),
           ffn_multipliers=(0.5, 4.0), num_gqa_groups=2, ffn_dim_divisor=32, qk_norm=True, tie_embeddings=True,
           init="corenet")


def hub_openelm_names(i):
    p = f"transformer.layers.{i}."  # Apple's modeling_openelm.py names, written out independently of hf.OPENELM
    return {f"layers.{i}.attn_norm.weight": p + "attn_norm.weight", f"layers.{i}.ffn_norm.weight": p + "ffn_norm.weight",
            f"layers.{i}.attn.qkv_proj.weight": p + "attn.qkv_proj.weight",
            f"layers.{i}.attn.q_norm.weight": p + "attn.q_norm.weight", f"layers.{i}.attn.k_norm.weight": p + "attn.k_norm.weight",
            f"layers.{i}.attn.out_proj.weight": p + "attn.out_proj.weight",
            f"layers.{i}.ffn.gate_up_proj.weight": p + "ffn.proj_1.weight", f"layers.{i}.ffn.down_proj.weight": p + "ffn.proj_2.weight"}


def test_openelm_hub_layout_round_trip(tmp_path):
    torch.manual_seed(2)
    ours = randomize_norms(Transformer(ModelConfig(**ELM))).eval()
    dims = ours.config.layer_dims()
    assert len(set(dims)) == 4  # heads and widths differ per layer: layer 0's geometry must not be reused
    # a directory in the Hub's layout, written here by hand
    names = {"tok_embeddings.weight": "transformer.token_embeddings.weight", "norm.weight": "transformer.norm.weight"}
    for i in range(4):
        names.update(hub_openelm_names(i))
    d = tmp_path / "hub"
    d.mkdir()
    save_file({names[k]: v.contiguous() for k, v in ours.state_dict().items()}, d / "model.safetensors")
    hub = {"model_type": "openelm", "architectures": ["OpenELMForCausalLM"], "num_transformer_layers": 4, "model_dim": 128,
           "head_dim": 16, "num_gqa_groups": 2, "qkv_multipliers": [0.5, 1.0], "num_query_heads": [q for q, _, _ in dims],
           "num_kv_heads": [k for _, k, _ in dims], "ffn_multipliers": [round(v, 2) for v in np.linspace(0.5, 4.0, 4)],
           "ffn_dim_divisor": 32, "ffn_with_glu": True, "activation_fn_name": "swish", "normalize_qk_projections": True,
           "share_input_output_layers": True, "rope_freq_constant": 10000, "rope_max_length": 4096,
           "max_context_length": 64, "vocab_size": 256, "normalization_layer_name": "rms_norm", "torch_dtype": "float32"}
    (d / "config.json").write_text(json.dumps(hub))
    back = hf.load_model(d)
    assert back.config.layer_dims() == dims
    for idx in prompts(256):
        torch.testing.assert_close(our_logits(back, idx), our_logits(ours, idx), atol=1e-6, rtol=0)
    # our export writes the same tensors and the Hub's config fields
    hf.save_model(ours, tmp_path / "out")
    st = load_file(tmp_path / "out" / "model.safetensors")
    assert set(st) == set(names.values())
    for i, (nq, nkv, ffn) in enumerate(dims):
        p = f"transformer.layers.{i}."
        assert st[p + "attn.qkv_proj.weight"].shape == ((nq + 2 * nkv) * 16, 128)
        assert st[p + "ffn.proj_1.weight"].shape == (2 * ffn, 128) and st[p + "ffn.proj_2.weight"].shape == (128, ffn)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    for k, v in hub.items():
        assert cfg[k] == v, k
    # no auto_map naming modeling files the export does not ship; tie_word_embeddings stated (transformers defaults
    # it to true, so an untied export without it would have its lm_head replaced by the embedding)
    assert "auto_map" not in cfg and cfg["tie_word_embeddings"] is True
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2
    back = hf.load_model(tmp_path / "out")
    torch.testing.assert_close(our_logits(back, prompts(256)[1]), our_logits(ours, prompts(256)[1]), atol=0, rtol=0)


SPEC_1_5 = {  # (L, d, head_dim): nq and F per layer, from the released OpenELM-1_1B config.json and ports
    "270M": ((16, 1280, 64), [12] * 5 + [16] * 7 + [20] * 4,
             [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608, 4864, 5120]),
    "450M": ((20, 1536, 64), [12] * 3 + [16] * 7 + [20] * 6 + [24] * 4,
             [768, 1024, 1280, 1536, 1792, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4352, 4608, 5120, 5376, 5632, 5888, 6144]),
    "1.1B": ((28, 2048, 64), [16] * 3 + [20] * 7 + [24] * 8 + [28] * 6 + [32] * 4,
             [1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4608, 4608, 5120, 5376, 5632,
              5888, 6144, 6400, 6656, 6912, 7168, 7424, 7680, 7936, 8192]),
    "3B": ((36, 3072, 128), [12] * 4 + [16] * 14 + [20] * 12 + [24] * 6,
           [1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 4096, 4352, 4608, 4864, 5120, 5632, 5888, 6144, 6400, 6656, 7168,
            7424, 7680, 7936, 8192, 8704, 8960, 9216, 9472, 9728, 10240, 10496, 10752, 11008, 11264, 11776, 12032, 12288]),
}


@pytest.mark.parametrize("size", list(SPEC_1_5))
@pytest.mark.parametrize("ffn_form", ["per_layer", "range"])
def test_openelm_hub_configs_give_spec_shapes(tmp_path, size, ffn_form):
    (L, d, hd), nq, ffn = SPEC_1_5[size]
    hub = {"model_type": "openelm", "num_transformer_layers": L, "model_dim": d, "head_dim": hd, "num_gqa_groups": 4,
           "qkv_multipliers": [0.5, 1.0], "num_query_heads": nq, "num_kv_heads": [n // 4 for n in nq],
           "ffn_multipliers": [round(v, 2) for v in np.linspace(0.5, 4.0, L)] if ffn_form == "per_layer" else [0.5, 4.0],
           "ffn_dim_divisor": 256, "ffn_with_glu": True, "activation_fn_name": "swish", "normalize_qk_projections": True,
           "share_input_output_layers": True, "rope_freq_constant": 10000, "rope_max_length": 4096,
           "max_context_length": 2048, "vocab_size": 32000, "normalization_layer_name": "rms_norm"}
    (tmp_path / "config.json").write_text(json.dumps(hub))
    c = hf.load_config(tmp_path)
    assert c.layer_dims() == [(q, q // 4, f) for q, f in zip(nq, ffn)]
    assert c.norm_eps == 1e-6 and c.tie_embeddings and c.qk_norm and c.block_size == 2048
    out = hf._openelm_hf_config(c, torch.bfloat16)  # an export stores the Hub's per-layer lists, whichever form came in
    assert out["num_query_heads"] == nq and out["ffn_multipliers"] == [round(v, 2) for v in np.linspace(0.5, 4.0, L)]


# ----------------------------------------------------------------------------- tokenizers

@pytest.fixture(scope="module")
def sp_models(tmp_path_factory):
    import sentencepiece as spm
    d = tmp_path_factory.mktemp("sp")
    text = open(os.path.join(ROOT, "model.py")).read().splitlines()
    for name, collapse in (("collapse", True), ("keep", False)):
        spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(d / name), vocab_size=300,
                                       model_type="bpe", remove_extra_whitespaces=collapse, minloglevel=2)
    spm.SentencePieceTrainer.train(  # LLaMA's conventions: identity normalization, dummy prefix, byte fallback
        sentence_iterator=iter(text), model_prefix=str(d / "llama"), vocab_size=400, model_type="bpe",
        normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True, minloglevel=2)
    import prepare  # and the tokenizer users train: prepare.py's conventions (no dummy prefix, spaces kept)
    prepare.train_tokenizer(["\n".join(text)], str(d / "prepare.model"), vocab_size=400)
    return d


def test_tokenizer(tmp_path, sp_models, capsys):
    import shutil
    hf_llama(tmp_path / "m", "mha", vocab=320)
    shutil.copy(sp_models / "keep.model", tmp_path / "m" / "tokenizer.model")
    tok = hf.load_tokenizer(tmp_path / "m")
    assert tok.vocab_size == 300 and tok.encode("def f(x):", bos=True)[0] == 1
    assert "collapses" not in capsys.readouterr().err
    shutil.copy(sp_models / "collapse.model", tmp_path / "m" / "tokenizer.model")
    hf.load_tokenizer(tmp_path / "m")
    assert "collapses runs of spaces" in capsys.readouterr().err  # the OpenLLaMA v1 warning
    # a vocabulary that does not match the model
    hf_llama(tmp_path / "big", "mha", vocab=512)
    with pytest.raises(InputError, match=r"has 300 pieces but the model .* has 512 embedding rows"):
        hf.load_tokenizer(tmp_path / "big", tokenizer=sp_models / "keep.model")


def test_openelm_tokenizer_missing_then_supplied(tmp_path, sp_models):
    ours = Transformer(ModelConfig(**{**ELM, "vocab_size": 300}))
    hf.save_model(ours, tmp_path / "elm")
    with pytest.raises(InputError, match="OpenELM checkpoint, which ships no tokenizer.*Llama-2"):
        hf.load_tokenizer(tmp_path / "elm")
    assert hf.load_tokenizer(tmp_path / "elm", tokenizer=sp_models / "keep.model").vocab_size == 300
    # exported with a tokenizer, the directory carries it, and transformers' Llama tokenizer settings
    hf.save_model(ours, tmp_path / "elm2", tokenizer=sp_models / "keep.model")
    assert hf.load_tokenizer(tmp_path / "elm2").vocab_size == 300
    assert json.loads((tmp_path / "elm2" / "tokenizer_config.json").read_text())["add_bos_token"] is True
    r = subprocess.run([sys.executable, "export.py", f"--init_from={tmp_path / 'elm2'}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "layer  3:" in r.stdout and "300 pieces" in r.stdout, r.stdout + r.stderr


# ----------------------------------------------------------------------------- bad input

def edit_json(path, **kw):
    d = json.loads(path.read_text())
    d.update(kw)
    path.write_text(json.dumps(d))


def test_bad_inputs(tmp_path):
    hf_llama(tmp_path / "a", "mha")
    edit_json(tmp_path / "a" / "config.json", model_type="gpt2")
    with pytest.raises(InputError, match="model_type 'gpt2'"):
        hf.load_model(tmp_path / "a")

    hf_llama(tmp_path / "b", "mha", max_shard_size="20KB")
    victim = sorted(f for f in os.listdir(tmp_path / "b") if f.endswith(".safetensors"))[1]
    os.remove(tmp_path / "b" / victim)
    with pytest.raises(InputError, match=f"shard .*{victim} .*is missing"):
        hf.load_model(tmp_path / "b")

    ref = hf_llama(tmp_path / "c", "gqa")
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    f = tmp_path / "c" / "model.safetensors"
    save_file({**sd, "model.layers.1.self_attn.k_proj.weight": torch.zeros(16, 96)}, f)
    with pytest.raises(InputError, match=r"model.safetensors: tensor 'model.layers.1.self_attn.k_proj.weight' has shape \(16, 96\), but the config implies \(24, 96\)"):
        hf.load_model(tmp_path / "c")
    save_file({k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"}, f)
    with pytest.raises(InputError, match="tensor 'model.layers.1.mlp.up_proj.weight' is missing"):
        hf.load_model(tmp_path / "c")
    save_file({**sd, "model.layers.2.mlp.up_proj.weight": torch.zeros(96, 96)}, f)
    with pytest.raises(InputError, match="unexpected tensor 'model.layers.2.mlp.up_proj.weight'"):
        hf.load_model(tmp_path / "c")
    f.write_bytes(b"truncated download")
    with pytest.raises(InputError, match="cannot read .*model.safetensors"):
        hf.load_model(tmp_path / "c")
    os.remove(f)
    with pytest.raises(InputError, match="no weights"):
        hf.load_model(tmp_path / "c")
    with pytest.raises(InputError, match="not a Hugging Face directory"):
        hf.load_model(tmp_path / "nowhere")
    with pytest.raises(InputError, match="qk_norm but uniform layers"):
        hf.save_model(Transformer(ModelConfig(vocab_size=32, n_layer=1, n_embd=32, n_head=2, ffn_dim=32, qk_norm=True)), tmp_path / "x")
    # width 36 with 8 heads of 8: transformers 5's LlamaConfig refuses it, so nothing is written
    odd = Transformer(ModelConfig(vocab_size=32, n_layer=1, n_embd=36, n_head=8, head_dim=8, ffn_dim=32))
    with pytest.raises(InputError, match="width 36 is not a multiple of the 8 heads: transformers' LlamaConfig refuses"):
        hf.save_model(odd, tmp_path / "odd")
    assert not os.path.exists(tmp_path / "odd")


def test_untied_openelm_as_apples_code_saves_it(tmp_path):
    """Apple's OpenELMModel also builds an unused `classifier` when untied; and under transformers' default
    tie_word_embeddings=true its lm_head is the embedding, so a file saved that way may have no lm_head."""
    torch.manual_seed(0)
    ours = randomize_norms(Transformer(ModelConfig(**{**ELM, "tie_embeddings": False}))).eval()
    hf.save_model(ours, tmp_path / "untied")
    cfg = json.loads((tmp_path / "untied" / "config.json").read_text())
    assert cfg["share_input_output_layers"] is False and cfg["tie_word_embeddings"] is False
    st = load_file(tmp_path / "untied" / "model.safetensors")
    save_file({**st, "transformer.classifier.weight": torch.randn(256, 128)}, tmp_path / "untied" / "model.safetensors")
    back = hf.load_model(tmp_path / "untied")
    assert not back.config.tie_embeddings
    for idx in prompts(256):
        torch.testing.assert_close(our_logits(back, idx), our_logits(ours, idx), atol=0, rtol=0)
    # no lm_head in the file: tied only where the config says tied (tie_word_embeddings absent = true)
    save_file({k: v for k, v in st.items() if k != "lm_head.weight"}, tmp_path / "untied" / "model.safetensors")
    with pytest.raises(InputError, match="tensor 'lm_head.weight' is missing"):
        hf.load_model(tmp_path / "untied")
    del cfg["tie_word_embeddings"]
    (tmp_path / "untied" / "config.json").write_text(json.dumps(cfg))
    tied = hf.load_model(tmp_path / "untied")
    assert tied.config.tie_embeddings and torch.equal(tied.tok_embeddings.weight, ours.tok_embeddings.weight)
    assert hf.load_config(tmp_path / "untied") == tied.config  # what train.py reads before loading agrees


# ----------------------------------------------------------------------------- the scripts

def test_scripts_accept_hf_dirs(tmp_path, sp_models):
    import checkpoint
    torch.manual_seed(3)
    ours = Transformer(ModelConfig(**{**ELM, "vocab_size": 300})).eval()
    hf.save_model(ours, tmp_path / "elm")  # as on the Hub: no tokenizer
    model, tok = checkpoint.load_model(str(tmp_path / "elm"))
    assert tok is None and torch.equal(our_logits(model, prompts(300)[0]), our_logits(ours, prompts(300)[0]))
    r = subprocess.run([sys.executable, "sample.py", f"--init_from={tmp_path / 'elm'}", f"--tokenizer={sp_models / 'keep.model'}",
                        "--start=def f(x):", "--max_new_tokens=5", "--greedy=True", "--device=cpu"],
                       cwd=ROOT, capture_output=True, text=True)
    # the continuation greedy decoding gives in this process (sample.py echoes the prompt itself)
    import sample
    from tokenizer import Tokenizer
    tok = Tokenizer(sp_models / "keep.model")
    ids = tok.encode("def f(x):", bos=True)
    new = sample.generate(model, torch.tensor([ids]), 5, greedy=True, eos_token_id=tok.eos_id)[0, len(ids):].tolist()
    new = new[:new.index(tok.eos_id)] if tok.eos_id in new else new
    text = tok.decode(ids + new)[len(tok.decode(ids)):]  # as it streams: the space before a word comes with it
    assert r.returncode == 0 and text.strip() and r.stdout.startswith("def f(x):" + text + "\n---"), (text, r.stdout)


@pytest.mark.parametrize("sp", ["prepare", "llama"])
def test_exported_tokenizer_matches_in_transformers(tmp_path, sp_models, sp):
    hf.save_model(Transformer(ModelConfig(vocab_size=400, n_layer=1, n_embd=32, n_head=2, ffn_dim=32)), tmp_path / "out",
                  tokenizer=sp_models / f"{sp}.model")
    ours, theirs = hf.load_tokenizer(tmp_path / "out"), transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    texts = ["def f(x):\n    return x  + 1", "h\u00e9llo w\u00f6rld 123", "a    b\n\n\tc"]
    # transformers 5 drops one of the dummy prefix's spaces before leading spaces (SentencePiece keeps it), so a
    # text that starts with spaces is compared only for prepare.py's tokenizer, which adds no dummy prefix
    for s in texts + ["  leading spaces"] * (sp == "prepare"):
        assert theirs(s)["input_ids"] == ours.encode(s, bos=True), s


def test_export_our_checkpoint_from_the_command_line(tmp_path, sp_models):
    import checkpoint
    torch.manual_seed(4)
    ours = randomize_norms(Transformer(ModelConfig(vocab_size=400, block_size=64, n_layer=2, n_embd=64, n_head=4,
                                                   n_kv_head=1, ffn_dim=96, init_std=0.1))).eval()
    data = tmp_path / "data"  # what prepare.py leaves: meta.json naming the tokenizer file beside it
    data.mkdir()
    (data / "tokenizer.model").write_bytes((sp_models / "prepare.model").read_bytes())
    import data as data_lib
    from tokenizer import Tokenizer
    data_lib.write_meta(data, {}, Tokenizer(data / "tokenizer.model"))
    checkpoint.save(str(tmp_path / "run"), 10, ours, ours.configure_optimizers(0.1, 1e-3, (0.9, 0.95)), {}, data_dir=str(data))
    r = subprocess.run([sys.executable, "export.py", f"--init_from={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "with tokenizer.model" in r.stdout, r.stdout + r.stderr
    assert_same(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval(), ours, 400)
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == (data / "tokenizer.model").read_bytes()
