"""Builds the Elixir training corpus: sources -> parse -> records -> filter/dedup/decontam -> shards.

    python launch/prepare_data.py --config=configs/data_otp_docs.py
    python launch/prepare_data.py --config=configs/data_hex_github.py --config.sources.hex.max_packages=200

Killed or interrupted, it resumes where it stopped when run again with the same output_dir.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from data_pipeline import PipelineError  # noqa: E402
from data_pipeline.run import run  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Data config file, e.g. configs/data_otp_docs.py.")


def parse_flags(argv):
    """absl's flag parsing, with config-file and override mistakes reported as one line, not a traceback."""
    try:
        argv = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.to_dict()  # a config file that failed to load raises only when first used
        return argv
    except flags.Error as error:
        sys.exit(f"prepare_data: {error}\nSee --helpfull for the flags.")
    except (AttributeError, KeyError) as error:  # what ml_collections raises for --config.no_such_name
        name = str(error).strip("'\"")
        sys.exit(f"prepare_data: no config setting {name!r}; check the --config.* names against the config file.")
    except Exception as error:  # ml_collections raises plain errors for a bad file or override
        sys.exit(f"prepare_data: bad --config or --config.* override: {type(error).__name__}: {error}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        manifest = run(_CONFIG.value)
    except PipelineError as error:
        sys.exit(f"prepare_data: {error}")
    except KeyboardInterrupt:
        sys.exit("prepare_data: interrupted; finished units are kept, run the same command to resume.")
    output = Path(_CONFIG.value.output_dir)
    train, validation = manifest["splits"]["train"], manifest["splits"]["validation"]
    logging.info("Wrote %d train and %d validation records (%d + %d Tekken tokens) to %s; see %s.",
                 train["records"], validation["records"], train["tekken_tokens"], validation["tekken_tokens"],
                 output, output / "report.md")
    print((output / "report.md").read_text())
    if manifest["failed_units"]:
        sys.exit(f"prepare_data: {len(manifest['failed_units'])} units failed (see manifest.json failed_units); "
                 f"run the same command again to retry them.")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
