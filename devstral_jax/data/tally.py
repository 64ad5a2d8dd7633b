"""Running token counts per group of rows (a mixture's sources, a curriculum's difficulty buckets), for the log.

A row marked with its group's index under `label` (the tally removes the mark) adds its real (non-padding)
tokens to that group's total, and every row carries the totals so far under `total`; the batch keeps its last
row's. The totals are part of the iterator state, so they survive a resume.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np


class Tallied(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, label: str, total: str, groups: int):
        super().__init__(parent)
        self.label, self.total, self.groups = label, total, groups

    def __iter__(self) -> grain.DatasetIterator:
        return _TallyIterator(self._parent.__iter__(), self.label, self.total, self.groups)


class _TallyIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, label: str, total: str, groups: int):
        super().__init__(parent)
        self.label, self.total = label, total
        self._tokens = np.zeros(groups, np.int64)

    def __next__(self) -> dict[str, np.ndarray]:
        row = dict(next(self._parent))
        self._tokens[int(row.pop(self.label))] += int(np.count_nonzero(row["inputs_segment_ids"]))
        row[self.total] = self._tokens.copy()
        return row

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "tokens": self._tokens.tolist()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._tokens = np.asarray(state["tokens"], np.int64)
