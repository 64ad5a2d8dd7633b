"""What every absl entry point in launch/ shares: flag parsing that turns config mistakes into one-line errors."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags


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


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` with config-override errors reported as usage errors."""
    app.run(main, flags_parser=_parse_flags)
