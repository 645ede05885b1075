"""
Our runs (and Meta downloads) out as Hugging Face directories, and a check that any checkpoint loads.

    python export.py --init_from=out/elm_tiny --out=hf/elm_tiny     # our run -> a Hugging Face directory
    python export.py --init_from=~/models/OpenELM-270M              # load a download and summarise its layers

The formats themselves are hf.py's (save_model writes LlamaForCausalLM or the Hub's OpenELM layout); this script
loads through checkpoint.load_model, so a run, a step folder, a LoRA run (merged), a Hugging Face or a Meta
directory all work.
"""
import os
import sys

import configurator
from configurator import InputError
from files import check_output, sole_writer

# -----------------------------------------------------------------------------
# settings: override with --key=value (see configurator.py)
init_from = ""  # what to export or check: our run/step directory, a Hugging Face or a Meta directory
out = ""  # write the Hugging Face directory here; "" = only load init_from and print a summary
dtype = ""  # exported tensor dtype: "" keeps the model's, or float32 | bfloat16 | float16
max_shard_gb = 5.0  # exported safetensors files are cut into shards of at most this many GB
tokenizer = ""  # a SentencePiece tokenizer.model to use and copy when the checkpoint has none (OpenELM)
# -----------------------------------------------------------------------------


def summary(path, model, tok):
    c = model.config
    lines = [f"{path}: {model.num_params() / 1e6:.2f}M parameters, {model.tok_embeddings.weight.dtype}, "
             f"{c.n_layer} layers, width {c.n_embd}, head_dim {c.dim_head}, vocab {c.vocab_size}, context {c.block_size}"]
    lines += [f"  layer {i:2d}: {nq} query heads, {nkv} kv heads, FFN {ffn}" for i, (nq, nkv, ffn) in enumerate(c.layer_dims())]
    lines.append(f"tokenizer: {tok.name} ({tok.vocab_size} pieces)" if tok else "tokenizer: none (pass --tokenizer=...)")
    return "\n".join(lines)


def main(argv):
    configurator.configure(globals(), argv)
    import checkpoint
    import hf
    if not init_from:
        raise InputError("give --init_from=<our run or checkpoint directory, or a Hugging Face / Meta directory>")
    out_dtype = configurator.torch_dtype(dtype) if dtype else None
    if not max_shard_gb > 0:
        raise InputError(f"max_shard_gb={max_shard_gb} must be above 0")
    if out:
        check_output(out, "out", folder=True)  # before the (long) load
        held = checkpoint.occupant(out)
        if held in ("checkpoints", "prepared data"):  # an earlier export may be replaced
            raise InputError(f"out={out} holds {held}: export to a folder of its own (--out=hf/<name>)")
        if os.path.isdir(out) and os.path.isdir(init_from) and os.path.samefile(out, init_from):
            raise InputError(f"out={out} is init_from itself: the export would replace the model it reads; export "
                             "to a folder of its own (--out=hf/<name>)")
        others = [f for f in (os.listdir(out) if os.path.isdir(out) else []) if f != ".lock"]
        if others and held is None:
            raise InputError(f"out={out} already holds other files ({', '.join(sorted(others)[:3])}"
                             f"{', ...' if len(others) > 3 else ''}): export to a new or empty folder (an earlier "
                             "export there would be replaced)")
    model, tok = checkpoint.load_model(init_from, tokenizer=tokenizer)
    if out:
        with sole_writer(out, "out", keep_lock=False):
            hf.save_model(model, out, tokenizer=tok, dtype=out_dtype, max_shard_size=int(max_shard_gb * 2**30))
    else:
        print(summary(init_from, model, tok))


if __name__ == "__main__":
    configurator.main(main, sys.argv[1:])
