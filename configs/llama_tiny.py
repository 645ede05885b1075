# llama_tiny: a LLaMA-shaped model of about 10M parameters for a 2-core CPU (uniform layers, untied
# lm_head, N(0, 0.02) init): `python train.py configs/llama_tiny.py`
# architecture (ModelConfig fields)
vocab_size = 8192
block_size = 256
n_layer = 8
n_embd = 256
n_head = 4
n_kv_head = 4
ffn_dim = 768
tie_embeddings = False
init = "normal"
# recipe: the LLaMA optimizer (AdamW 0.9/0.95, decay 0.1 on everything, warmup from 0, cosine to 0.1x, clip 1),
# shortened to elm_tiny's budget (~1.2M tokens)
data_dir = "data/stdlib"
out_dir = "out/llama_tiny"
batch_size = 8
global_batch_size = 8
max_iters = 600
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 50
warmup_init_lr = 0.0
lr_decay_iters = 600
weight_decay = 0.1
wd_exclude_1d = False
grad_clip = 1.0
eval_interval = 100
eval_windows = 160
save_interval = 200
keep_last = 2
dtype = "bfloat16"
