# OpenELM-*-Instruct: the OpenELM paper (section 4) tunes on the cleaned UltraFeedback (60k prompts) with the
# Alignment Handbook, by rejection sampling or DPO. It publishes no supervised-tuning hyperparameters that we could
# find, so this recipe is Open-Instruct's (lr 2e-5, linear, 3% warmup, no weight decay, batch 128) over
# UltraFeedback's preferred ("chosen") conversations: supervised tuning only, not the preference step.
#   python prepare.py --source=hf:HuggingFaceH4/ultrafeedback_binarized --hf_split=train_sft --chat_format=messages \
#       --messages_field=chosen --tokenizer=llama2/tokenizer.model --seq_len=2048 --name=ultrafeedback
#   torchrun --nproc_per_node=8 train.py configs/finetune_openelm_instruct.py --init_from=hf/OpenELM-1_1B
init_from = "hf/OpenELM-1_1B"
data_dir = "data/ultrafeedback"
out_dir = "out/openelm_1_1b_instruct"
global_batch_size = 128
batch_size = 8  # per GPU
epochs = 2.0
learning_rate = 2e-5
min_lr = 0.0
warmup_ratio = 0.03
warmup_init_lr = 0.0
lr_schedule = "linear"
weight_decay = 0.0
beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
grad_clip = 1.0
dtype = "bfloat16"
parallel = "ddp"
eval_interval = 100
save_interval = 0
