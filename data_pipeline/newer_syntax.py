"""Files written for a newer Elixir than the installed one: told apart from broken files.

A file that uses syntax a later Elixir introduced does not parse here, but it is not broken: it is reported as
"needs a newer Elixir" and counted per version, and it parses once a newer Elixir is installed (the Elixir
version is part of every unit's checkpoint key, so that run redoes it). Which syntax came with which version is
shared with the evaluation: devstral_jax/elixir/versions.py.
"""

from devstral_jax.elixir.versions import installed_elixir, needs_newer

__all__ = ["installed_elixir", "needs_newer"]
