"""Offline dataset for the demo: the installed Elixir's own modules (docs, specs, doctests) + local code.

    python launch/prepare_data.py --config=configs/data_otp_docs.py
    python launch/prepare_data.py --config=configs/data_otp_docs.py --config.sources.local.paths="('~/my_app',)"
"""

from data_pipeline.config import base_config


def get_config():
    config = base_config()
    config.output_dir = "out/data_otp_docs"
    config.sources.otp_docs.enabled = True
    config.sources.local.paths = ("data_pipeline",)  # this repo's own Elixir (data_pipeline/sources/otp_docs.exs)
    return config
