"""Offline dataset for the demo: the installed Elixir's own modules (docs, specs, doctests) + local code.

    python launch/prepare_data.py --config=configs/data_otp_docs.py
    python launch/prepare_data.py --config=configs/data_otp_docs.py --config.sources.local.paths="('~/my_app',)"
    python launch/prepare_data.py --config=configs/data_otp_docs.py --config.sources.local.paths="('~/lib_x',)" \
        --config.sources.local.licence=""                             # detect its licence instead
"""

from pathlib import Path

import data_pipeline
from data_pipeline.config import OWN_CODE_LICENCE, base_config


def get_config():
    config = base_config()
    config.output_dir = "out/data_otp_docs"
    config.sources.otp_docs.enabled = True
    # This repo's own Elixir (data_pipeline/sources/otp_docs.exs), found from any working directory. The repo
    # has no LICENSE file to detect, so its licence is declared; with other paths, set licence="" to detect.
    config.sources.local.paths = (str(Path(data_pipeline.__file__).parent),)
    config.sources.local.licence = OWN_CODE_LICENCE
    return config
