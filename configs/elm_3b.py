# OpenELM-3B: architecture of corenet gpt_configs / HF OpenELM_CONFIGS and the published recipe
# (CoreNet projects/openelm/pretraining_configs/openelm_3B.yaml). `python train.py configs/elm_3b.py` on 8 GPUs with torchrun.
# architecture (ModelConfig fields)
vocab_size = 32000
block_size = 2048
n_layer = 36
n_embd = 3072
head_dim = 128
qkv_multipliers = (0.5, 1.0)
ffn_multipliers = (0.5, 4.0)
num_gqa_groups = 4
ffn_dim_divisor = 256
qk_norm = True
tie_embeddings = True
norm_eps = 1e-6
init = "corenet"
z_loss = 1e-4
# recipe: 2048 sequences x 2048 tokens = 4.19M tokens/step, 350k steps (about 1.47T tokens)
global_batch_size = 2048
batch_size = 16  # per GPU; accumulation makes up the rest of the global batch
max_iters = 350_000
learning_rate = 1.2e-3
min_lr = 1.2e-4
warmup_iters = 5000
warmup_init_lr = 1e-6
lr_decay_iters = 350_001  # CoreNet's cosine period is max_iters - warmup + 1
weight_decay = 0.1
wd_exclude_1d = True  # CoreNet exempts every 1-D parameter; the embedding is decayed
beta1, beta2, adam_eps = 0.9, 0.95, 1e-8
grad_clip = 1.0
dtype = "bfloat16"
activation_checkpointing = True
parallel = "fsdp"  # CoreNet: FSDP full_shard, bf16 params, fp32 gradient reduction
save_interval = 5000
