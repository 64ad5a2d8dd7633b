"""The errors a user can fix, as one family.

Every entry point runs through `cli.run`, which prints a `UserError` as one line (what went wrong and what to
do) and exits with status 1; anything else is a bug in this code and keeps its traceback. So raise a member of
this family only for a mistake in what the user gave or asked for (a config, a path, a file, a model folder),
never for a broken invariant of our own.

Each member also keeps the built-in base it had before the family existed (ValueError, RuntimeError, ...), so
`except ValueError` in callers and tests still sees it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; reported in one line, without a traceback."""


class FlagError(UserError, ValueError):
    """A command-line flag that is missing, contradicts another, or names something that is not there."""


class ConfigError(UserError, ValueError):
    """A configuration that is missing a field, has an unknown one, contradicts itself, names a file that is not
    there, or does not fit the machine (e.g. a mesh the devices cannot form)."""


class DataError(UserError, ValueError):
    """Training or evaluation data that cannot be read: no shards, an empty or unreadable shard, a bad record."""


class RecordError(DataError):
    """A record that does not follow the schema in `devstral_jax/data/records.py`."""


class CheckpointError(UserError, RuntimeError):
    """A training checkpoint that cannot be used by this run (missing, from another base model, unreadable)."""


class ModelDirError(UserError, ValueError):
    """A model directory (Hugging Face, consolidated Mistral, PEFT adapter) whose files do not make the model
    they describe."""


class SafetensorsError(ModelDirError):
    """A safetensors file that is truncated, corrupt, or not what its header says."""


class AdapterError(ModelDirError):
    """An adapter directory PEFT-compatible tools would reject, or one that does not fit the base model."""


class ExportError(UserError, ValueError):
    """A model that must not be exported as it is, or an export that would overwrite something."""


class OutputExistsError(ExportError, FileExistsError):
    """The output path is taken and overwriting was not asked for."""


class TrainingError(UserError, RuntimeError):
    """A run that cannot start or continue: nothing to train, repeated non-finite steps, no validation data."""


class BenchmarkError(UserError, ValueError):
    """A benchmark, completions or records file that cannot be read as documented."""


class StaleSamplesError(UserError, ValueError):
    """An evaluation output folder holding samples made with other settings (model, sampling, seed, problems)."""


class SandboxUnavailable(UserError, RuntimeError):
    """The OS sandbox for model-written code was required and this machine cannot provide it."""


class PipelineError(UserError):
    """A corpus build that cannot run as configured (bad setting, missing tool, unreachable input)."""
