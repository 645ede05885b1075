# elm_tiny: an OpenELM-shaped model of about 10M parameters for a 2-core CPU (layer-wise scaling, GQA,
# QK-norm, tied embeddings), trained on the embedded Python-stdlib corpus: `python train.py configs/elm_tiny.py`
# architecture (ModelConfig fields)
vocab_size = 8192
block_size = 256
n_layer = 6
n_embd = 384
head_dim = 64
qkv_multipliers = (0.5, 1.0)
ffn_multipliers = (0.5, 4.0)
num_gqa_groups = 4
ffn_dim_divisor = 64
qk_norm = True
tie_embeddings = True
init = "corenet"
z_loss = 1e-4
# recipe: the OpenELM optimizer (AdamW 0.9/0.95, decay 0.1 except 1-D, warmup from 1e-6, cosine to 0.1x, clip 1,
# z-loss) shortened to ~1.2M tokens: about 6 minutes on a 2-core CPU with bf16 autocast, 20 in float32 (AVX2 only)
data_dir = "data/stdlib"
out_dir = "out/elm_tiny"
batch_size = 8
global_batch_size = 8
max_iters = 600
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 50
warmup_init_lr = 1e-6
lr_decay_iters = 600
weight_decay = 0.1
wd_exclude_1d = True
grad_clip = 1.0
eval_interval = 100
eval_windows = 160
save_interval = 200
keep_last = 2
dtype = "bfloat16"
