"""The diagonal Fisher information of the LoRA adapters on a stage's data, for EWC (ewc.py), and a plot of which
layers and modules it marks as important.

Estimator: the empirical Fisher from per-example gradients, F = mean over rows of g_row^2, where g_row is the
gradient of a packed row's mean per-token negative log-likelihood. Per-example, not the square of microbatch
gradients: squaring a gradient averaged over n rows estimates F/n plus the squared mean gradient (the cross terms
of different rows do not cancel inside a square), so it understates how much each row depends on a parameter by
about the batch size and depends on it. The rows are scanned one at a time inside one jitted function, so memory
stays at the adapters' size (the running sum of squares) plus one row's activations.
"""

from __future__ import annotations

import re
from typing import Iterable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from flax import nnx  # noqa: E402

from devstral_jax.train.step import micro_loss  # noqa: E402


def make_fisher_sum(graphdef: nnx.GraphDef, chunk_size: int):
    """`(lora, frozen, rows) -> (sum over rows of g_row^2, rows counted)` for rows `[n, seq]` (rows with no
    target token count nothing)."""

    def row_loss(lora: nnx.State, frozen: nnx.State, row: dict[str, jax.Array]) -> jax.Array:
        loss, tokens = micro_loss(graphdef, lora, frozen, jax.tree.map(lambda x: x[None], row), None, chunk_size)
        return loss / jnp.maximum(tokens, 1.0)

    def fisher_sum(lora: nnx.State, frozen: nnx.State, rows: dict[str, jax.Array]):
        def body(carry, row):
            squares, count = carry
            grads = jax.grad(row_loss)(lora, frozen, row)
            real = (row["loss_mask"].sum() > 0).astype(jnp.float32)
            return (jax.tree.map(lambda s, g: s + real * jnp.square(g), squares, grads), count + real), None

        zeros = jax.tree.map(jnp.zeros_like, lora)
        (squares, count), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), rows)
        return squares, count

    return jax.jit(fisher_sum)


def estimate(graphdef: nnx.GraphDef, lora: nnx.State, frozen: nnx.State, batches: Iterable[dict[str, np.ndarray]],
             chunk_size: int) -> nnx.State:
    """The empirical diagonal Fisher of `lora` over the rows of `batches` (train-step batches,
    `[microbatches, rows, seq]`)."""
    fisher_sum = make_fisher_sum(graphdef, chunk_size)
    total, count = jax.tree.map(jnp.zeros_like, lora), 0.0
    for batch in batches:
        rows = {k: jnp.asarray(v.reshape(-1, v.shape[-1])) for k, v in batch.items()}
        squares, n = fisher_sum(lora, frozen, rows)
        total, count = jax.tree.map(jnp.add, total, squares), count + float(n)
    return jax.tree.map(lambda s: s / max(count, 1.0), total)


def module_importance(fisher: nnx.State) -> tuple[list[str], np.ndarray]:
    """(module names, [layers, modules] sum of F over each module's adapter matrices) for stacked layers."""
    sums: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(fisher):
        keys = [str(getattr(k, "key", getattr(k, "idx", ""))) for k in path]
        module = ".".join(k for k in keys if k not in ("layers", "lora", "a", "b", "value"))
        values = np.asarray(jax.device_get(leaf))
        per_layer = values.reshape(values.shape[0], -1).sum(1) if "layers" in keys else values.sum(keepdims=True)
        sums[module] = sums.get(module, 0) + per_layer
    names = sorted(sums, key=lambda name: re.sub(r"^attn", "0", name))
    return names, np.stack([sums[name] for name in names], axis=1)


def plot_importance(fisher: nnx.State, png_path: str, title: str) -> None:
    """A heatmap of each layer's and module's total Fisher (log scale): where the stage's knowledge sits."""
    names, values = module_importance(fisher)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 0.35 * values.shape[0] + 2))
    image = ax.imshow(np.log10(values + 1e-30), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="log10 sum of Fisher")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
