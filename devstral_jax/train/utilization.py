"""How well training uses the device: FLOPs per token, the device's peak, MFU and peak memory.

The trainer logs these in metrics.jsonl and benchmarks/train_step.py reports them, from the same functions.
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from devstral_jax.config import ModelConfig

# Measured dense bf16 matmul peaks (DESIGN.md: MFU = achieved / measured peak of the device).
KNOWN_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}


def flops_per_token(model_config: ModelConfig, lora: nnx.State, seq_len: int) -> float:
    """DESIGN.md's accounting: 4 N_frozen (forward + input gradient) + 6 N_lora + causal attention 6 L H Q T."""
    c = model_config
    frozen_matmul = c.num_params - c.vocab_size * c.hidden_size - (2 * c.num_layers + 1) * c.hidden_size
    n_lora = sum(x.size for x in jax.tree.leaves(lora))
    attention = 6 * c.num_layers * c.num_heads * c.head_dim * seq_len
    return 4 * frozen_matmul + 6 * n_lora + attention


def peak_flops(config: ml_collections.ConfigDict) -> float | None:
    """One device's peak FLOP/s: `config.train.peak_tflops` if set, else a known device's; None if unknown."""
    if config.train.peak_tflops:
        return config.train.peak_tflops * 1e12
    kind = jax.devices()[0].device_kind
    return next((tflops * 1e12 for name, tflops in KNOWN_PEAK_TFLOPS.items() if name in kind), None)


def mfu(flops_per_second: float, peak_per_device: float) -> float:
    """Model FLOPs utilization of all devices together."""
    return flops_per_second / (peak_per_device * jax.device_count())


def peak_device_memory_gb() -> float | None:
    """The first device's peak memory in use so far (None where the backend does not report it, e.g. the CPU)."""
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return peak / 1e9 if peak is not None else None
