"""Evaluation on the CPU: greedy, one sample per problem; `--model=random:tiny` runs the whole path without weights.

    python launch/evaluate.py --config=configs/eval_tiny_cpu.py --model=random:tiny \
        --benchmark=tests/eval/data/humaneval_ex_sample.jsonl --output_dir=/tmp/eval
"""

import ml_collections

from devstral_jax.config import preset, to_config_dict
from devstral_jax.eval.benchmarks import HUMANEVAL_EX, OTP_ELIXIR


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Architecture for `--model=random:<preset>` is the preset's; the execution fields here (dtype, storage,
    # scan_layers, lora_*) apply to every model loaded, e.g. --config.model.mlp_storage=nf4.
    config.model = to_config_dict(preset("tiny", dtype="float32", param_dtype="float32", remat_policy="none"))
    config.eval = ml_collections.ConfigDict(dict(
        benchmarks=(str(HUMANEVAL_EX), str(OTP_ELIXIR)),  # MultiPL-E JSONL files, when no --benchmark is given
        num_samples=1,  # completions per problem (n of pass@k)
        temperature=0.0,  # 0 = greedy
        top_k=0,
        top_p=1.0,
        max_new_tokens=128,
        batch_size=8,  # prompts per generation batch
        steps_per_call=16,  # decode steps per device call between stop-sequence checks
        ks=(1, 10, 100),  # pass@k reported for each k <= num_samples
        timeout=5.0,  # seconds per program (MultiPL-E: 5)
        workers=0,  # execution workers; 0 = one per CPU core
        sandbox="required",  # OS sandbox or refuse to run; "best_effort": rlimits only where it is missing
        max_problems=0,  # per benchmark; 0 = all
        max_doctest_problems=200,
        perplexity_seq_len=512,
        perplexity_max_tokens=200_000,
    ))
    return config
