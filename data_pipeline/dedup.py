"""Exact and near deduplication, with BigCode's settings for the near part.

Exact: SHA-256 of the content normalized for layout (line ends, trailing spaces, blank lines).
Near: MinHash (devstral_jax/data/near_duplicates.py) over 5-gram shingles of code tokens, 256 permutations, LSH for
a Jaccard similarity of 0.7 (data_pipeline/config.py).
"""

from __future__ import annotations

import hashlib


def normalized(text: str) -> str:
    lines = (line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def exact_key(text: str) -> str:
    return hashlib.sha256(normalized(text).encode()).hexdigest()
