# Open-Instruct (Wang et al. 2023, "How Far Can Camels Go?"; allenai/open-instruct scripts/finetune_with_accelerate.sh):
# LLaMA models tuned on Dolly, OASST1, the Tulu mixture and others with lr 2e-5, linear decay after a 3% warmup,
# no weight decay, 2 epochs, 128 sequences per step, up to 2048 tokens each, bf16.
#   python prepare.py --source=oasst1_data.jsonl --chat_format=messages --tokenizer=hf/open_llama_7b/tokenizer.model \
#       --seq_len=2048 --name=oasst1         # or --source=2023-04-12_oasst_ready.trees.jsonl --chat_format=oasst1
#   torchrun --nproc_per_node=8 train.py configs/finetune_tulu.py --init_from=hf/open_llama_7b --data_dir=data/oasst1
init_from = "hf/open_llama_7b"
data_dir = "data/tulu"
out_dir = "out/tulu_7b"
global_batch_size = 128
batch_size = 2  # per GPU
epochs = 2.0
learning_rate = 2e-5
min_lr = 0.0
warmup_ratio = 0.03
warmup_init_lr = 0.0
lr_schedule = "linear"
weight_decay = 0.0
beta1, beta2, adam_eps = 0.9, 0.999, 1e-8  # torch AdamW defaults, as the script leaves them
grad_clip = 1.0  # our default; the script does not set one
dtype = "bfloat16"
activation_checkpointing = True
parallel = "fsdp"  # Open-Instruct used DeepSpeed ZeRO-3; FSDP2 is its equivalent here
eval_interval = 100
save_interval = 0
