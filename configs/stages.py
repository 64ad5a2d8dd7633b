"""The seeds' three-stage curriculum as one run: stage 1 continued pretraining on Elixir code (`text`
records), stage 2 instructions (`chat`/`fim`, with discriminative per-layer learning rates), stage 3
book-derived material. Each stage trains in <workdir>/<name>, starting from the previous stage's adapters.

    python launch/train.py --config=configs/stages.py --workdir=runs/curriculum \
        --config.base=/path/to/Devstral-Small-2507
"""

import ml_collections

from devstral_jax.train.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "devstral_small_qlora_gpu")
    config.stages = (
        ml_collections.ConfigDict(dict(
            name="stage1_code", data=dict(train_paths=("data/stage1",), validation_paths=("data/stage1",)),
            train=dict(steps=3000), optim=dict(learning_rate=2e-4))),
        ml_collections.ConfigDict(dict(
            name="stage2_instructions", data=dict(train_paths=("data/stage2",), validation_paths=("data/stage2",)),
            train=dict(steps=2000), optim=dict(learning_rate=1e-4, layer_lr_decay=0.9))),
        ml_collections.ConfigDict(dict(
            name="stage3_books", data=dict(train_paths=("data/stage3",), validation_paths=("data/stage3",)),
            train=dict(steps=500), optim=dict(learning_rate=5e-5))),
    )
    return config
