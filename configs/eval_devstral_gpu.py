"""MultiPL-E's protocol on Devstral Small: 20 samples per problem at temperature 0.2, top-p 0.95 (pass@1, pass@10).

    python launch/evaluate.py --config=configs/eval_devstral_gpu.py --model=/path/to/hf_dir \
        --benchmark=humaneval-elixir.jsonl --benchmark=mbpp-elixir.jsonl --output_dir=eval/devstral
"""

import ml_collections

from devstral_jax.config import preset, to_config_dict
from devstral_jax.eval.benchmarks import HUMANEVAL_EX, OTP_ELIXIR


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Execution settings for the loaded weights: bf16 compute, NF4 frozen linears (fits one 80 GB GPU).
    config.model = to_config_dict(preset("devstral_small_2507", dtype="bfloat16", param_dtype="bfloat16",
                                         remat_policy="none", attn_storage="nf4", mlp_storage="nf4"))
    config.eval = ml_collections.ConfigDict(dict(
        benchmarks=(str(HUMANEVAL_EX), str(OTP_ELIXIR)),  # MultiPL-E JSONL files, when no --benchmark is given
        num_samples=20,
        temperature=0.2,
        top_k=0,
        top_p=0.95,
        max_new_tokens=512,
        batch_size=32,
        steps_per_call=32,
        ks=(1, 10),
        timeout=5.0,
        workers=0,
        sandbox="required",  # OS sandbox or refuse to run; "best_effort": rlimits only where it is missing
        max_problems=0,
        max_doctest_problems=500,
        perplexity_seq_len=2048,
        perplexity_max_tokens=1_000_000,
    ))
    return config
