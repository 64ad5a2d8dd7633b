"""Near-duplicate detection by MinHash, with BigCode's settings by default: 5-gram shingles of code tokens (runs of
letters, digits and `_`), 256 permutations, LSH for a Jaccard similarity of 0.7; a candidate counts as a duplicate
only when its estimated similarity really reaches the threshold. The first text seen is kept, so the caller's order
decides. Used by the data pipeline's dedup (data_pipeline/dedup.py) and by rehearsal's diversity report
(devstral_jax/train/rehearsal.py).
"""

from __future__ import annotations

import re

import numpy as np
from datasketch import MinHash, MinHashLSH

CODE_TOKEN = re.compile(r"[A-Za-z0-9_]+")
_CODE_TOKEN_BYTES = re.compile(CODE_TOKEN.pattern.encode())


def code_tokens(text: str, lower: bool = False) -> list[bytes]:
    """`CODE_TOKEN.findall(text)` (lower-cased if `lower`), encoded: the tokens are ASCII, so one pass over the
    UTF-8 bytes finds the same ones (non-ASCII characters encode to bytes no token holds, and bytes.lower()
    changes only ASCII letters), without a str per token."""
    data = text.encode("utf-8", "surrogatepass")
    return _CODE_TOKEN_BYTES.findall(data.lower() if lower else data)


class NearDuplicates:
    """Remembers the texts kept so far and tells whether a new one nearly duplicates one of them."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 256, ngram: int = 5, seed: int = 1):
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        reference = MinHash(num_perm=num_perm, seed=seed)
        self._permutations, self._scheme = reference.permutations, reference.scheme  # shared, not rebuilt per file
        self._signatures: dict[str, np.ndarray] = {}

    def signature(self, text: str) -> MinHash | None:
        """The MinHash of the file's token 5-grams (a minimum per permutation: the order they are added in does
        not matter); None for files too short to have one."""
        tokens = code_tokens(text)
        if len(tokens) < self.ngram:
            return None
        shingles = {b" ".join(tokens[i:i + self.ngram]) for i in range(len(tokens) - self.ngram + 1)}
        minhash = MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self._permutations,
                          scheme=self._scheme)
        minhash.update_batch(shingles)
        return minhash

    def duplicate_of(self, key: str, text: str) -> str | None:
        """The key of a kept file that `text` nearly duplicates; otherwise None, and `text` is kept."""
        minhash = self.signature(text)
        if minhash is None:
            return None
        for candidate in sorted(self._lsh.query(minhash)):
            if np.mean(minhash.hashvalues == self._signatures[candidate]) >= self.threshold:
                return candidate
        self._lsh.insert(key, minhash)
        self._signatures[key] = minhash.hashvalues
        return None
