# OpenLLaMA-13B (v1): LLaMA-13B shapes, trained by EasyLM on TPU (EasyLM LLaMAConfig and examples/pretrain_llama_7b.sh; the OpenLLaMA README).
# `torchrun --nproc_per_node=8 train.py configs/open_llama_13b.py`
# architecture (ModelConfig fields)
vocab_size = 32000
block_size = 2048
n_layer = 40
n_embd = 5120
n_head = 40
n_kv_head = 40
ffn_dim = 13824  # 256 * ceil(int(8d/3) / 256)
norm_eps = 1e-6
tie_embeddings = False
init = "normal"  # N(0, 0.02) on every kernel and the embedding (EasyLM at the time)
# recipe: EasyLM's pretrain_llama_7b.sh, scaled as the maintainers describe
global_batch_size = 1024  # 2M tokens per step (maintainer, issue #74)
batch_size = 4
max_iters = 500_000  # 1T tokens at 2M tokens per step
learning_rate = 1.5e-4  # maintainer, open_llama issue #74
min_lr = 1.5e-5  # 10% of peak, as for 7B (not published for 13B)
warmup_iters = 2000
warmup_init_lr = 0.0
lr_decay_iters = 500_000  # warmup and step count for 13B were not published: assumed as 7B
weight_decay = 0.1
wd_exclude_1d = False  # EasyLM decays every parameter, norms and embeddings included
beta1, beta2, adam_eps = 0.9, 0.95, 1e-8
grad_clip = 1.0
dtype = "bfloat16"  # EasyLM trained in fp32 on TPU; bf16 autocast is the GPU equivalent
activation_checkpointing = True
parallel = "fsdp"
save_interval = 5000
