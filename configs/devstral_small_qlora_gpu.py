"""Devstral Small 2507 QLoRA on one 80 GB GPU: NF4 base (14.2 GB), LoRA r=16 on all seven projections,
bf16 compute, sequences of 4096 packed tokens, full remat, cuDNN flash attention, 8 rows per forward/backward
(45 GB compiled for an H100; up to 18 rows fit 80 GB: benchmarks/step_memory.py --target=h100).

    python launch/train.py --config=configs/devstral_small_qlora_gpu.py --workdir=runs/devstral-elixir \
        --config.base=/path/to/Devstral-Small-2507 --config.data.train_paths='("data/shards",)'
"""

import ml_collections

from devstral_jax.config import preset, to_config_dict
from devstral_jax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = to_config_dict(preset(
        "devstral_small_2507", dtype="bfloat16", param_dtype="bfloat16", scan_layers=True, remat_policy="full",
        attn_storage="nf4", mlp_storage="nf4", lora_rank=16, lora_alpha=32.0, lora_dropout=0.05,
        attention_impl="cudnn"))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.data.seq_len = 4096
    config.data.batch_size = 16
    config.data.microbatches = 2  # 8 rows of 4096 per forward/backward
    config.data.worker_count = 4
    config.train.steps = 2000
    config.train.loss_chunk = 512
    config.train.log_every = 10
    config.train.eval_every = 200
    config.train.eval_batches = 8
    config.train.checkpoint_every = 200
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 0.0
    return config
