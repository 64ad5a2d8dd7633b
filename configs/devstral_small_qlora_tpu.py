"""Devstral Small 2507 QLoRA on a TPU v5e/v6e slice (e.g. v5litepod-16, v6e-8): NF4 base sharded fully
(FSDP over the slice's chips), LoRA r=16, bf16, sequences of 4096, full remat, Pallas splash attention. One
process per host: launch the same command on every host; JAX reads the TPU pod environment.

    python launch/train.py --config=configs/devstral_small_qlora_tpu.py --workdir=gs://bucket/runs/devstral-elixir \
        --config.base=/path/to/Devstral-Small-2507
"""

import ml_collections

from devstral_jax.train.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "devstral_small_qlora_gpu")
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # every chip holds 1/N of the base
    config.model.attention_impl = "splash"  # Pallas splash attention with segment ids
    config.data.batch_size = 32
    config.data.microbatches = 2
    config.data.worker_count = 8
    return config
