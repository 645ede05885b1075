# Stanford Alpaca: LLaMA-7B tuned on 52k instruction/output pairs (tatsu-lab/stanford_alpaca, its README's table:
# batch 128, lr 2e-5, 3 epochs, max length 512, weight decay 0; warmup ratio 0.03 and cosine decay in train.sh).
# Here in the Open-Instruct chat template, from OpenLLaMA-7B (or LLaMA-7B) as a Hugging Face directory:
#   python prepare.py --source=alpaca_data.json --chat_format=alpaca --tokenizer=hf/open_llama_7b/tokenizer.model \
#       --seq_len=512 --name=alpaca
#   torchrun --nproc_per_node=8 train.py configs/finetune_alpaca.py --init_from=hf/open_llama_7b
# The architecture comes from init_from; a config sets only the recipe.
init_from = "hf/open_llama_7b"
data_dir = "data/alpaca"
out_dir = "out/alpaca_7b"
global_batch_size = 128
batch_size = 4  # per GPU
epochs = 3.0  # max_iters and lr_decay_iters follow from the number of rows
learning_rate = 2e-5
min_lr = 0.0
warmup_ratio = 0.03
warmup_init_lr = 0.0
lr_schedule = "cosine"
weight_decay = 0.0
beta1, beta2, adam_eps = 0.9, 0.999, 1e-8  # transformers' Trainer defaults, which Alpaca used
grad_clip = 1.0  # the Trainer's default max_grad_norm
dtype = "bfloat16"
activation_checkpointing = True
parallel = "fsdp"  # Alpaca used FSDP full_shard on 4 A100s
eval_interval = 100
save_interval = 0  # at the end
