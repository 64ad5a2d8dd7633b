"""What every absl entry point in launch/ shares: flag parsing that turns config mistakes into one-line errors,
and a log that keeps the progress bars readable."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, plus ml_collections' `--config.x.y=` override errors (an AttributeError/KeyError/
    TypeError/ValueError raised while parsing, e.g. a misspelt key), reported without a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        message = f"bad --config override: {e.args[0] if e.args else e}"
    sys.stderr.write(f"FATAL Flags parsing error: {message}\nPass --helpfull to see the flags.\n")
    sys.exit(1)


def _not_orbax_chatter(record: logging.LogRecord) -> bool:
    """Orbax logs dozens of INFO lines per checkpoint (threads, renames, throughput); its warnings still show."""
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname.replace("\\", "/")


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` with config-override errors reported as usage errors and Orbax's INFO lines dropped."""
    absl_logging.get_absl_handler().addFilter(_not_orbax_chatter)
    app.run(main, flags_parser=_parse_flags)
