"""The Elixir corpus builder: sources -> parse with real Elixir -> records -> filter/dedup/decontam -> shards.

Run it with `python launch/prepare_data.py --config=configs/data_otp_docs.py`; see README.md.
"""


class PipelineError(Exception):
    """A problem the user can fix (bad config, missing tool, unreachable input); shown without a traceback."""
