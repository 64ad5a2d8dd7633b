"""Builds the Elixir training corpus: sources -> parse -> records -> filter/dedup/decontam -> shards.

    python launch/prepare_data.py --config=configs/data_otp_docs.py
    python launch/prepare_data.py --config=configs/data_hex_github.py --config.sources.hex.max_packages=200

Killed or interrupted, it resumes where it stopped when run again with the same output_dir.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from data_pipeline.run import run as build_corpus  # noqa: E402
from devstral_jax.cli import run  # noqa: E402
from devstral_jax.errors import FlagError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Data config file, e.g. configs/data_otp_docs.py.")


def main(argv):
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        manifest = build_corpus(_CONFIG.value)
    except KeyboardInterrupt:
        sys.exit("prepare_data: interrupted; finished units are kept, run the same command to resume.")
    output = Path(_CONFIG.value.output_dir)
    train, validation = manifest["splits"]["train"], manifest["splits"]["validation"]
    logging.info("Wrote %d train and %d validation records (%d + %d Tekken tokens) to %s; see %s.",
                 train["records"], validation["records"], train["tekken_tokens"], validation["tekken_tokens"],
                 output, output / "report.md")
    print((output / "report.md").read_text())
    if failed := manifest["failed_units"]:
        first = "; ".join(f"{f['unit']['id']}: {f['reason'][:200]}" for f in failed[:3])
        sys.exit(f"prepare_data: {len(failed)} units failed (all in manifest.json failed_units), e.g. {first}. "
                 "Network failures are retried by the next run; units that failed on a bad answer or file are "
                 "skipped unless you pass --config.retry_failed=True.")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    run(main)
