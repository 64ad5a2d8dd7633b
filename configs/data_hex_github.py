"""The full online corpus: Hex.pm packages and GitHub repositories, plus the OTP docs.

Needs the network, a GitHub token (export GITHUB_TOKEN=...) and, for more than 100 Hex API requests a
minute, a Hex API key (export HEX_API_KEY=...). Safe to stop and restart: finished units are kept.

    python launch/prepare_data.py --config=configs/data_hex_github.py
    python launch/prepare_data.py --config=configs/data_hex_github.py --config.sources.hex.max_packages=500
"""

from data_pipeline.config import base_config


def get_config():
    config = base_config()
    config.output_dir = "out/data_hex_github"
    config.workers = 4
    config.units_in_flight = 16
    config.sources.otp_docs.enabled = True
    config.sources.hex.enabled = True
    config.sources.github.enabled = True
    config.sources.github.min_stars = 10
    config.sources.github.pushed_since = "2021-01-01"
    return config
