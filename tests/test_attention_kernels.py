"""The fused kernels (Pallas splash attention for TPUs, cuDNN for NVIDIA GPUs) against the reference kernel.

Splash runs here in Pallas's interpreter: the same kernel a TPU runs. cuDNN needs a GPU to run, so on a CPU we
check the two halves of its correctness: the masking arguments it is given compute the reference kernel's
values through `jax.nn.dot_product_attention`'s XLA implementation, and (with the CUDA plugin installed, as
`pip install -e '.[gpu-aot]'` does) the step compiled for an H100 really calls cuDNN's fused attention.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from devstral_jax.model.attention_kernels import KERNELS, xla_attention
from devstral_jax.model.chunked_attention import chunked_attention
from devstral_jax.model.fused_attention import cudnn_arguments, cudnn_present, index_masking_is_exact, splash_attention

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _packed(batch=2, length=256, heads=4, kv_heads=2, dim=128, step=1, seed=0):
    """q, k, v and masking inputs: rows packing two documents whose positions count up by `step` from 0, and
    padding (segment 0, position 0) at the end of row 0 and the start of row 1."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(batch, length, kv_heads, dim)), jnp.float32) for _ in range(2))
    segments = np.ones((batch, length), np.int32)
    segments[:, 100:] = 2
    segments[0, 230:] = 0
    segments[1, :9] = 0
    starts = np.concatenate([np.ones((batch, 1), bool), segments[:, 1:] != segments[:, :-1]], axis=1)
    positions = np.zeros((batch, length), np.int32)
    for t in range(1, length):
        positions[:, t] = np.where(starts[:, t], 0, positions[:, t - 1] + step)
    positions[segments == 0] = 0
    masking = dict(q_positions=jnp.asarray(positions), kv_positions=jnp.asarray(positions),
                   q_segment_ids=jnp.asarray(segments), kv_segment_ids=jnp.asarray(segments))
    return q, k, v, masking, segments > 0


def _values_and_grads(kernel, q, k, v, masking, window, real):
    """The kernel's output and the gradients of a loss on the real (non-padding) tokens' outputs."""
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * real[:, :, None, None]

    def loss(q, k, v):
        out = kernel(q, k, v, sliding_window=window, **masking)
        return jnp.sum(out * cotangent), out

    grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


@pytest.mark.parametrize("window", [None, 48])
def test_splash_attention_values_and_gradients_equal_the_reference_kernel(window):
    q, k, v, masking, real = _packed()
    assert bool(index_masking_is_exact(sliding_window=window, **masking))
    splash = lambda *a, **kw: splash_attention(*a, **kw, interpret=True)  # noqa: E731
    out, grads = _values_and_grads(splash, q, k, v, masking, window, real)
    want_out, want_grads = _values_and_grads(xla_attention, q, k, v, masking, window, real)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(want_out)[real], rtol=1e-4, atol=1e-5)
    for ours, expected in zip(grads, want_grads):
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_fused_kernels_fall_back_to_chunked_where_index_masking_is_not_exact():
    """Positions that skip (a window of 48 positions is 24 tokens here): masking by index would differ, so the
    kernel must compute the chunked kernel's attention, which follows positions."""
    q, k, v, masking, real = _packed(step=2)
    assert not bool(index_masking_is_exact(sliding_window=48, **masking))
    ours = splash_attention(q, k, v, sliding_window=48, interpret=True, **masking)
    np.testing.assert_allclose(ours, chunked_attention(q, k, v, sliding_window=48, **masking), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours)[real],
                               np.asarray(xla_attention(q, k, v, sliding_window=48, **masking))[real],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("window", [None, 48])
def test_cudnn_masking_arguments_give_the_reference_values(window):
    """What cudnn_attention passes to jax.nn.dot_product_attention (the mask as a bias, is_causal, the window),
    run by its XLA implementation, is the reference kernel's attention for every real token."""
    q, k, v, masking, real = _packed()
    arguments = cudnn_arguments(sliding_window=window, **masking)
    assert arguments["is_causal"] and arguments["local_window_size"] == (None if window is None else (window - 1, 0))
    ours = jax.nn.dot_product_attention(q, k, v, **arguments, implementation="xla")
    np.testing.assert_allclose(np.asarray(ours)[real],
                               np.asarray(xla_attention(q, k, v, sliding_window=window, **masking))[real],
                               rtol=1e-5, atol=1e-5)


def test_cudnn_kernel_runs_the_chunked_kernel_off_a_gpu():
    q, k, v, masking, _ = _packed(length=64)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    np.testing.assert_array_equal(jax.jit(lambda: KERNELS["cudnn"](q, k, v, sliding_window=None, **masking))(),
                                  chunked_attention(q, k, v, sliding_window=None, **masking))


@pytest.mark.skipif(not cudnn_present(), reason="needs the CUDA plugin of the pinned JAX (pip install -e "
                    "'.[gpu-aot]'); CI has none: benchmarks/results/step_memory_h100_*cudnn*.json records the proof")
def test_cudnn_kernel_compiles_to_cudnn_fused_attention_for_an_h100():
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1", target_config=(
        ROOT / "benchmarks" / "gpu_targets" / "h100_sxm.txtpb").read_text())
    device = jax.sharding.SingleDeviceSharding(topology.devices[0])
    spec = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype, sharding=device)  # noqa: E731

    def loss(q, k, v, positions, segments):
        return KERNELS["cudnn"](q, k, v, q_positions=positions, kv_positions=positions, q_segment_ids=segments,
                                kv_segment_ids=segments, sliding_window=None).astype(jnp.float32).sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
        spec((1, 256, 8, 128)), spec((1, 256, 2, 128)), spec((1, 256, 2, 128)), spec((1, 256), jnp.int32),
        spec((1, 256), jnp.int32)).compile()
    targets = set(re.findall(r'custom_call_target="(__cudnn\$fmha\w*)"', compiled.as_text()))
    assert targets == {"__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"}  # forward, backward
