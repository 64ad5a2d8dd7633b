"""The Elixir corpus builder: sources -> parse with real Elixir -> records -> filter/dedup/decontam -> shards.

Run it with `python launch/prepare_data.py --config=configs/data_otp_docs.py`; see README.md.
"""

from devstral_jax.errors import PipelineError

__all__ = ["PipelineError"]
