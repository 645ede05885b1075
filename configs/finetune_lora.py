# Open-Instruct's LoRA recipe (allenai/open-instruct scripts/finetune_lora_with_accelerate.sh): rank 256, alpha 256,
# dropout 0.1 on every linear layer, lr 1e-4 with linear decay after a 3% warmup, no weight decay, 5 epochs,
# 128 sequences of up to 2048 tokens per step. Only the adapters are trained and saved; sample.py, eval.py and
# `python export.py` load the run merged into its base. Smaller adapters (Alpaca-LoRA used rank 8, alpha 16 on
# q and v) are one --lora_rank=8 --lora_alpha=16 away; our q, k and v share one fused projection.
#   python train.py configs/finetune_lora.py --init_from=hf/OpenELM-1_1B --data_dir=data/ultrafeedback
init_from = "hf/open_llama_7b"
data_dir = "data/tulu"
out_dir = "out/tulu_lora_7b"
lora_rank = 256
lora_alpha = 256.0
lora_dropout = 0.1
lora_targets = "qkv_proj,out_proj,gate_up_proj,down_proj"
global_batch_size = 128
batch_size = 4  # per GPU
epochs = 5.0
learning_rate = 1e-4
min_lr = 0.0
warmup_ratio = 0.03
warmup_init_lr = 0.0
lr_schedule = "linear"
weight_decay = 0.0
beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
grad_clip = 1.0
dtype = "bfloat16"
parallel = "ddp"  # the frozen base is replicated; --parallel=fsdp shards it (and the adapters) instead
eval_interval = 100
save_interval = 0
