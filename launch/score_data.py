"""Scores the difficulty of the records of existing JSONL files (data_pipeline/difficulty.py), in place or into
another file: for corpora built before the pipeline scored records, and for the shipped sample, which
make_sample.exs writes without one.

    python launch/score_data.py --input=devstral_jax/data/sample/sample.jsonl
    python launch/score_data.py --input=old/train.jsonl --output=new/train.jsonl
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from absl import flags, logging  # noqa: E402

from data_pipeline.difficulty import rescore_jsonl  # noqa: E402
from data_pipeline.run import _tekken, _tokens  # noqa: E402
from devstral_jax.cli import run  # noqa: E402
from devstral_jax.elixir.parse import parser_pool  # noqa: E402
from devstral_jax.errors import FlagError  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "A JSONL file of training records.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the scored records (default: over --input).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Elixir parser workers.")
flags.mark_flag_as_required("input")


def main(argv):
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not Path(_INPUT.value).is_file():
        raise FlagError(f"--input={_INPUT.value}: no such file.")
    tokenizer = _tekken()
    with parser_pool(_WORKERS.value) as pool:
        count = rescore_jsonl(_INPUT.value, _OUTPUT.value or _INPUT.value, pool, lambda r: _tokens(tokenizer, r))
    logging.info("Scored %d records into %s.", count, _OUTPUT.value or _INPUT.value)


if __name__ == "__main__":
    run(main)
