"""The embedded default, what `make demo` runs: a tiny Devstral-architecture model (2 layers, hidden 64,
Tekken's 131,072-token vocabulary) with an NF4 base and LoRA r=16 on all seven projections, trained on
the CPU on real Elixir documentation (devstral_jax/data/sample/)."""

import ml_collections

from devstral_jax.config import preset, to_config_dict
from devstral_jax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = to_config_dict(preset(
        "tiny", dtype="float32", param_dtype="float32", remat_policy="none",
        attn_storage="nf4", mlp_storage="nf4", lora_rank=16, lora_alpha=32.0,
        # A random base at 1/sqrt(hidden) rather than 0.02: behind an RMSNorm, 0.02 leaves the frozen lm_head
        # too weak to express any peaked next-token distribution, whatever the adapters learn.
        initializer_range=0.125))
    config.mesh.data = -1
    config.data.seq_len = 256
    config.data.batch_size = 8
    config.train.steps = 150
    config.train.loss_chunk = 64  # [8, 64, 131072] float32 logits per chunk: 268 MB, not 1 GB
    config.train.log_every = 10
    config.train.eval_every = 50
    config.train.checkpoint_every = 25
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 10
    return config
