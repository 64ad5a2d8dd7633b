"""Streamed checkpoint loading: HF (sharded) and Mistral consolidated files against transformers' logits,
quantize-on-load, placement on an 8-device mesh, and clear errors for broken checkpoints."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from devstral_jax import sharding
from devstral_jax.config import ConfigError
from devstral_jax.hf import param_map
from devstral_jax.hf.load import load
from devstral_jax.hf.model_dir import ModelDirError
from devstral_jax.hf.safetensors_io import SafetensorsError
from devstral_jax.model import Transformer
from devstral_jax.model.linear import QuantizedKernel
from devstral_jax.quant import nf4
from tests.hf_helpers import save_consolidated_checkpoint, save_hf_checkpoint
from tests.model_helpers import TINY, hf_logits, max_relative_error

TOKENS = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 24))
F32 = dict(dtype="float32", progress=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One random model, saved by transformers in shards and by hand in Mistral's consolidated format."""
    root = tmp_path_factory.mktemp("checkpoints")
    hf = save_hf_checkpoint(TINY, root / "hf")
    save_consolidated_checkpoint(hf, TINY, root / "consolidated")
    return hf, root


@pytest.mark.parametrize("scan_layers", [True, False])
def test_sharded_hf_checkpoint_loads_with_transformers_logits(checkpoints, scan_layers):
    hf, root = checkpoints
    assert len([f for f in os.listdir(root / "hf") if f.endswith(".safetensors")]) >= 2
    loaded = load(root / "hf", scan_layers=scan_layers, **F32)
    assert loaded.config.num_layers == TINY.num_layers and loaded.quant_report == []
    assert max_relative_error(loaded.model(TOKENS)[0], hf_logits(hf, TOKENS)) < 1e-4
    assert loaded.tokenizer.encode("defmodule", bos=True, eos=False)[0] == 1  # tekken.json from the directory


def test_consolidated_checkpoint_loads_with_transformers_logits(checkpoints):
    hf, root = checkpoints
    assert sorted(os.listdir(root / "consolidated")) == ["consolidated.safetensors", "params.json", "tekken.json"]
    loaded = load(root / "consolidated", **F32)
    architecture = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                    "rms_norm_eps", "rope_theta", "vocab_size", "sliding_window")
    assert {f: getattr(loaded.config, f) for f in architecture} == {f: getattr(TINY, f) for f in architecture}
    assert max_relative_error(loaded.model(TOKENS)[0], hf_logits(hf, TOKENS)) < 1e-4


def test_nf4_on_load_matches_quantizing_the_dense_weights_and_reports_each_tensor(tmp_path):
    config = TINY.replace(head_dim=32)  # q/k/v/o inputs a multiple of NF4's 64-row blocks
    save_hf_checkpoint(config, tmp_path / "hf", seed=1)
    dense = load(tmp_path / "hf", **F32).model
    quantized = load(tmp_path / "hf", attn_storage="nf4", mlp_storage="nf4", **F32)
    for name in param_map.param_names(config)[1:10]:  # layer 0's seven projections (and two norms)
        got = param_map.get_variable(quantized.model, name)
        want = param_map.get_variable(dense, name)[...][0]
        if name.lora_target is None:
            np.testing.assert_array_equal(got[...][0], want)
            continue
        assert isinstance(got, QuantizedKernel) and got.storage == "nf4"
        got, want = jax.tree.map(lambda x: x[0], got.quantized()), nf4.quantize(want)
        np.testing.assert_array_equal(got.codes, want.codes, err_msg=name.hf_name)
        np.testing.assert_array_equal(got.scale_codes, want.scale_codes, err_msg=name.hf_name)
        np.testing.assert_allclose(got.group_scales, want.group_scales, rtol=1e-6)  # float sums: order may differ
        np.testing.assert_allclose(got.scale_offset, want.scale_offset, rtol=1e-6)
    assert len(quantized.quant_report) == 7 * config.num_layers
    assert {row.storage for row in quantized.quant_report} == {"nf4"}
    assert all(15 < row.snr_db < 30 and 4.1 < row.bits_per_param < 4.3 for row in quantized.quant_report)


def test_loading_on_an_8_device_mesh_puts_each_shard_on_its_device(tmp_path):
    # Wide enough that NF4's 64-row blocks stay whole on each device (TINY's 64 inputs cannot split 2 ways).
    hf = save_hf_checkpoint(TINY.replace(hidden_size=128, intermediate_size=256), tmp_path / "hf")
    assert jax.device_count() == 8
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    loaded = load(tmp_path / "hf", mesh=mesh, mlp_storage="nf4", lora_rank=4, seed=3, **F32)  # the project's rules
    # The reference: the whole checkpoint in memory through the plain (unsharded) path, same seed for LoRA.
    reference = Transformer(loaded.config, rngs=nnx.Rngs(3))
    param_map.load_state_dict(reference, {k: v.numpy() for k, v in hf.state_dict().items()}.__getitem__)
    expected = dict(nnx.to_flat_state(nnx.state(reference)))
    sharded = 0
    for path, variable in nnx.to_flat_state(nnx.state(loaded.model)):
        array, want = variable[...], np.asarray(expected[path][...])
        assert array.sharding.mesh == mesh and array.sharding.spec == sharding.variable_spec(variable, mesh), path
        assert {shard.device for shard in array.addressable_shards} == set(jax.devices())
        for shard in array.addressable_shards:
            # Exact for codes and weights; NF4's float32 second-level scales may differ in the last bit, as the
            # reference quantizes all layers at once and the loader one layer at a time.
            np.testing.assert_allclose(shard.data, want[shard.index], rtol=1e-6, atol=0, err_msg=str(path))
        sharded += any(axis is not None for axis in array.sharding.spec)
    assert sharded >= 10  # embeddings, projections, NF4 codes, LoRA
    assert max_relative_error(loaded.model(TOKENS)[0], reference(TOKENS)[0]) < 1e-5


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _index(path):
    with open(path / "model.safetensors.index.json") as f:
        return json.load(f)


def test_missing_unexpected_and_misshapen_tensors_are_named(checkpoints, tmp_path):
    hf, root = checkpoints
    # A shard dropped from disk and from the index: its tensors are missing.
    missing = _copy(root / "hf", tmp_path / "missing")
    index = _index(missing)
    shard = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    lost = sorted(name for name, file in index["weight_map"].items() if file == shard)
    index["weight_map"] = {name: file for name, file in index["weight_map"].items() if file != shard}
    (missing / "model.safetensors.index.json").write_text(json.dumps(index))
    os.remove(missing / shard)
    with pytest.raises(ModelDirError, match=rf"missing tensor {lost[0]}"):
        load(missing, **F32)

    # The config says 2 layers; layer 2's tensors are then unexpected.
    extra = _copy(root / "hf", tmp_path / "extra")
    config = json.loads((extra / "config.json").read_text())
    (extra / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ModelDirError,
                       match=r"unexpected tensor model\.layers\.2\.\S+ in model-\d+-of-\d+\.safetensors"):
        load(extra, **F32)

    # The config's intermediate size disagrees with the weights.
    wide = _copy(root / "hf", tmp_path / "wide")
    (wide / "config.json").write_text(json.dumps({**config, "intermediate_size": 256}))
    with pytest.raises(ModelDirError, match=r"tensor model\.layers\.0\.mlp\.gate_proj\.weight in "
                                              r"model-\d+-of-\d+\.safetensors has shape \(192, 64\); config\.json "
                                              r"implies \(256, 64\)"):
        load(wide, **F32)


def test_truncated_safetensors_file_is_named_before_anything_loads(checkpoints, tmp_path):
    hf, root = checkpoints
    broken = _copy(root / "hf", tmp_path / "truncated")
    shard = _index(broken)["weight_map"]["lm_head.weight"]
    size = os.path.getsize(broken / shard)
    with open(broken / shard, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(SafetensorsError, match=rf"{shard} is truncated: tensor lm_head\.weight ends at byte {size}"):
        load(broken, **F32)
    with open(broken / shard, "r+b") as f:
        f.truncate(5)
    with pytest.raises(SafetensorsError, match=rf"{shard} is truncated or not a safetensors file"):
        load(broken, **F32)


def test_params_json_that_contradicts_the_weights_is_named(checkpoints, tmp_path):
    hf, root = checkpoints
    path = _copy(root / "consolidated", tmp_path / "consolidated")
    params = json.loads((path / "params.json").read_text())
    (path / "params.json").write_text(json.dumps({**params, "n_kv_heads": 4}))
    with pytest.raises(ModelDirError, match=r"tensor layers\.0\.attention\.wk\.weight in consolidated\.safetensors "
                                              r"has shape \(48, 64\); params\.json implies \(96, 64\)"):
        load(path, **F32)
    (path / "params.json").write_text(json.dumps({**params, "n_layers": 4}))
    with pytest.raises(ModelDirError, match=r"missing tensor layers\.3\.attention\.wq\.weight"):
        load(path, **F32)
    (path / "params.json").write_text(json.dumps({**params, "moe": {"num_experts": 8}}))
    with pytest.raises(ConfigError, match="params.json sets 'moe'"):
        load(path, **F32)
