# OpenLLaMA-7B (v1/v2): LLaMA-7B shapes, trained by EasyLM on TPU (EasyLM LLaMAConfig and examples/pretrain_llama_7b.sh; the OpenLLaMA README).
# `torchrun --nproc_per_node=8 train.py configs/open_llama_7b.py`
# architecture (ModelConfig fields)
vocab_size = 32000
block_size = 2048
n_layer = 32
n_embd = 4096
n_head = 32
n_kv_head = 32
ffn_dim = 11008  # 256 * ceil(int(8d/3) / 256)
norm_eps = 1e-6
tie_embeddings = False
init = "normal"  # N(0, 0.02) on every kernel and the embedding (EasyLM at the time)
# recipe: EasyLM's pretrain_llama_7b.sh; 2048 x 2048 = 4.19M tokens/step, 250k steps = 1T tokens
global_batch_size = 2048
batch_size = 4
max_iters = 250_000
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 2000
warmup_init_lr = 0.0
lr_decay_iters = 250_000  # optax warmup_cosine_decay_schedule: decay_steps includes the warmup
weight_decay = 0.1
wd_exclude_1d = False  # EasyLM decays every parameter, norms and embeddings included
beta1, beta2, adam_eps = 0.9, 0.95, 1e-8
grad_clip = 1.0
dtype = "bfloat16"  # EasyLM trained in fp32 on TPU; bf16 autocast is the GPU equivalent
activation_checkpointing = True
parallel = "fsdp"
save_interval = 5000
