"""How much a quantization costs, tensor by tensor: bytes, absolute error and signal-to-noise ratio."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class QuantRow:
    name: str
    shape: tuple[int, ...]
    storage: str
    bytes: int  # as stored
    bf16_bytes: int  # the same tensor in bf16, for comparison
    mean_abs_error: float
    max_abs_error: float
    snr_db: float  # 10 log10(sum w^2 / sum (w - w_hat)^2)

    @property
    def bits_per_param(self) -> float:
        return 8 * self.bytes / int(np.prod(self.shape))


@jax.jit
def _error_stats(original: jax.Array, restored: jax.Array) -> tuple[jax.Array, ...]:
    """noise, signal, mean |error|, max |error|: one fused pass (eagerly, each op is a pass over the tensor)."""
    w = original.astype(jnp.float32)
    error = restored.astype(jnp.float32) - w
    return jnp.sum(error * error), jnp.sum(w * w), jnp.mean(jnp.abs(error)), jnp.max(jnp.abs(error))


def measure(name: str, original, restored, storage: str, stored_bytes: int) -> QuantRow:
    """Compares a tensor with its dequantized copy (both any array type), in float32."""
    original = jnp.asarray(original)
    noise, signal, mean_abs_error, max_abs_error = map(float, _error_stats(original, jnp.asarray(restored)))
    return QuantRow(
        name=name, shape=tuple(original.shape), storage=storage, bytes=stored_bytes,
        bf16_bytes=int(original.size) * 2, mean_abs_error=mean_abs_error, max_abs_error=max_abs_error,
        snr_db=10 * np.log10(signal / noise) if noise > 0 else float("inf"),
    )


def format_table(rows: list[QuantRow]) -> str:
    """A fixed-width table with a total line."""
    header = f"{'tensor':<44} {'shape':>18} {'storage':>7} {'MiB':>9} {'bits/w':>6} {'mean|err|':>10} " \
             f"{'max|err|':>10} {'SNR dB':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.name:<44} {'x'.join(map(str, r.shape)):>18} {r.storage:>7} {r.bytes / 2**20:>9.2f} "
                     f"{r.bits_per_param:>6.3f} {r.mean_abs_error:>10.3e} {r.max_abs_error:>10.3e} {r.snr_db:>7.2f}")
    stored, bf16 = sum(r.bytes for r in rows), sum(r.bf16_bytes for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<44} {'':>18} {'':>7} {stored / 2**20:>9.2f}   ({bf16 / max(stored, 1):.2f}x smaller "
                 f"than bf16's {bf16 / 2**20:.2f} MiB)")
    return "\n".join(lines)
