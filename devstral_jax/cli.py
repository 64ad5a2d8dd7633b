"""What every absl entry point in launch/ shares: one-line errors for user mistakes, tracebacks for bugs, and a
log that keeps the progress bars readable."""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging

from devstral_jax.errors import UserError


def _program() -> str:
    return os.path.basename(sys.argv[0]) or "devstral_jax"


def _fail(message: str) -> None:
    sys.stderr.write(f"{_program()}: error: {message}\n")
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, plus the config file's and `--config.x.y=` overrides' errors (a misspelt key, a value of
    the wrong type, a config file that does not load), reported in one line without a traceback."""
    try:
        argv = flags.FLAGS(argv)
        for name in ("config",):  # ml_collections loads a config file lazily: make it fail here, not later
            if name in flags.FLAGS and flags.FLAGS[name].value is not None:
                flags.FLAGS[name].value.to_dict()
        return argv
    except flags.Error as e:
        _fail(f"{e}\nPass --helpfull to see the flags.")
    except UserError as e:
        _fail(str(e))
    except (AttributeError, KeyError, TypeError, ValueError, OSError, SyntaxError) as e:
        _fail(f"bad --config or --config.* override: {_one_line(e)}")


def _one_line(error: BaseException) -> str:
    """The message of an ml_collections error on one line (it wraps a KeyError in an AttributeError, and a
    KeyError's str() is the repr of its message)."""
    while len(error.args) == 1 and isinstance(error.args[0], BaseException):
        error = error.args[0]
    message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    if isinstance(error, KeyError):
        message = f"no config key {message}"
    return " ".join(message.split())


def _one_line_user_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """Runs `main`; a `UserError` becomes one line on stderr and exit status 1, anything else keeps its traceback."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            _fail(str(e))

    return wrapped


def _not_orbax_chatter(record: logging.LogRecord) -> bool:
    """Orbax logs dozens of INFO lines per checkpoint (threads, renames, throughput); its warnings still show."""
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname.replace("\\", "/")


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` for every entry point: user mistakes (flags, config, any `UserError`) in one line,
    bugs with their traceback, Orbax's INFO lines dropped."""
    absl_logging.get_absl_handler().addFilter(_not_orbax_chatter)
    app.run(_one_line_user_errors(main), flags_parser=_parse_flags)
