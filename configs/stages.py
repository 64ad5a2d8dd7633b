"""The seeds' three-stage curriculum as one run, over one prepared corpus (here the shipped sample): continued
pretraining on Elixir text (admitted from easy to hard: devstral_jax/data/curriculum.py), then instructions, then
prose, each stage a mixture of record sources (devstral_jax/data/mixture.py) starting from the previous stage's
adapters, the later ones held to the earlier ones by EWC (devstral_jax/train/ewc.py) and replaying some of their
data. The prose stage also rehearses: before it, the instructions stage's model answers a sample of the
instructions' prompts, and the answers whose Elixir parses make up 10% of its rows
(devstral_jax/train/rehearsal.py; the instructions stage has none to rehearse, as the stage before it is text
only). Every stage reports its forgetting on general (Python) code and on each stage's validation data: the
table is printed at the end.

    python launch/train.py --config=configs/stages.py --workdir=runs/curriculum       # 300 steps in all
    python launch/train.py --config=configs/stages.py:30 --workdir=runs/quick         # 30 steps in all

It builds on configs/tiny_cpu.py (the CPU demo model); for Devstral, set the same `stages` on
configs/devstral_small_qlora_gpu.py and point `data.train_paths` at `launch/prepare_data.py`'s output. The
shipped sample holds documentation text and instructions only, so its "prose" stage reads the documentation
again; a corpus with books (source kind `book`) or guides (`elixir_guides`) trains the third stage on those.
"""

import ml_collections

from devstral_jax.train.config import sibling_config


def stages(total_steps: int) -> tuple[ml_collections.ConfigDict, ...]:
    """CPT 50% of the steps, instructions 30%, prose 20%."""
    def stage(name: str, share: float, mixture: tuple[dict, ...], data: dict | None = None,
              **sections) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(name=name, train=dict(steps=max(1, round(total_steps * share))),
                                              data=dict(mixture=mixture, **(data or {})), **sections))

    return (
        # Easy to hard: the shipped sample's scores spread over these buckets (data_pipeline/difficulty.py).
        stage("cpt", 0.5, (dict(name="elixir_text", weight=1.0, kind="text"),),
              data=dict(curriculum=dict(pacing="root", start=0.15, buckets=(0.0, 0.2, 0.3, 1.0)))),
        stage("instructions", 0.3, (dict(name="chat", weight=0.7, kind="chat"),
                                    dict(name="elixir_text", weight=0.3, kind="text")),
              ewc=dict(strength=100.0, schedule="warmup", warmup_steps=max(1, total_steps // 20))),
        stage("prose", 0.2, (dict(name="prose", weight=0.8, kind="text", source=("book", "elixir_guides", "otp_docs")),
                             dict(name="chat", weight=0.2, kind="chat")),
              ewc=dict(strength=100.0, schedule="decay"), optim=dict(learning_rate=3e-3), rehearsal=dict(ratio=0.1)),
    )


def get_config(total_steps: str = "300") -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "tiny_cpu")
    config.stages = stages(int(total_steps))
    config.rehearsal.update(prompts=16, max_new_tokens=32, batch_size=8)  # the stages that rehearse share these
    return config
