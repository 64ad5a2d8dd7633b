"""Devstral Small 2507 QLoRA on one 24 GB GPU (RTX 4090, L4, A10 24 GB...): the 80 GB config with one row of 4096
tokens per forward/backward (gradient accumulation over the batch's 16 rows, which costs no memory per
microbatch) and cuDNN flash attention (the chunked kernel where cuDNN cannot run or be proven exact).

Compiled for an H100 it needs 19.75 GB per device (benchmarks/results/step_memory_h100_devstral_small_qlora_24gb
_cudnn.json: 15.3 GB of arguments, of which 14.2 GB is the frozen NF4 base with its bf16 embedding and lm_head,
and 4.5 GB of temporaries), leaving room for the CUDA context and the allocator:

    python benchmarks/step_memory.py --config=configs/devstral_small_qlora_24gb.py --target=h100
    python launch/train.py --config=configs/devstral_small_qlora_24gb.py --workdir=runs/devstral-elixir \
        --config.base=/path/to/Devstral-Small-2507 --config.data.train_paths='("data/shards",)'
"""

import ml_collections

from devstral_jax.train.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "devstral_small_qlora_gpu")
    config.model.attention_impl = "cudnn"
    config.data.microbatches = config.data.batch_size  # one row per forward/backward
    return config
