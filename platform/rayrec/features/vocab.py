"""String -> int vocabularies shared by offline jobs and serving.

Ids 0 and 1 are reserved (padding and unknown) in every vocabulary. Ids are assigned in sorted
order of the values, so the same data gives the same ids whatever the parallelism; extending a
vocabulary keeps every existing id and appends new values, so models trained on an earlier
vocabulary stay valid for the items they know.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"


class Vocabulary:
    """An ordered, immutable mapping of strings to dense ids with reserved pad/unknown ids."""

    def __init__(self, name: str, values: Iterable[str]) -> None:
        self.name = name
        self._values: list[str] = [PAD_TOKEN, UNK_TOKEN, *values]
        self._index: dict[str, int] = {v: i for i, v in enumerate(self._values)}
        if len(self._index) != len(self._values):
            raise ValueError(f"vocabulary {name!r} has repeated values")
        self._lookup = pd.Index(self._values)  # hash index for vectorised encode, built once

    @classmethod
    def build(cls, name: str, values: Iterable[str]) -> Vocabulary:
        distinct = {v for v in values if v is not None and v != "" and v not in (PAD_TOKEN, UNK_TOKEN)}
        return cls(name, sorted(distinct))

    def extend(self, values: Iterable[str]) -> Vocabulary:
        """A new vocabulary with every existing id unchanged and unseen values appended in order."""
        new = sorted({v for v in values if v and v not in self._index})
        return Vocabulary(self.name, [*self._values[2:], *new])

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: str) -> bool:
        return value in self._index

    def id_of(self, value: str | None) -> int:
        return self._index.get(value, UNK_ID) if value else UNK_ID

    def value_of(self, idx: int) -> str:
        return self._values[idx]

    @property
    def values(self) -> list[str]:
        return list(self._values)

    def encode(self, values: pd.Series | Iterable[str | None]) -> np.ndarray:
        """Vectorised lookup; missing or unseen values map to UNK_ID."""
        series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype="object")
        codes = self._lookup.get_indexer(series.astype("object"))
        codes = np.where(codes < 0, UNK_ID, codes)
        return codes.astype(np.int32)

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self._values).encode()).hexdigest()[:16]

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps({"name": self.name, "values": self._values}, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, directory: Path, name: str) -> Vocabulary:
        data = json.loads((directory / f"{name}.json").read_text())
        values = data["values"]
        if values[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(f"{directory / name}.json: not a rayrec vocabulary (reserved ids missing)")
        return cls(name, values[2:])


def vocab_set_fingerprint(vocabs: Iterable[Vocabulary]) -> str:
    """One hash over several vocabularies: models and indexes record it to refuse a mismatch."""
    joined = "|".join(f"{v.name}:{v.fingerprint()}" for v in sorted(vocabs, key=lambda v: v.name))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def encode_token_lists(vocab: Vocabulary | pd.Index, lists: list[list[str]]) -> pa.ListArray:
    """Many token lists encoded in one vectorised lookup, as an Arrow list<int32> array."""
    import pyarrow as pa

    lengths = np.fromiter((len(tokens) for tokens in lists), dtype=np.int64, count=len(lists))
    flat = pd.Series([t for tokens in lists for t in tokens], dtype="object")
    if isinstance(vocab, Vocabulary):
        codes = vocab.encode(flat)
    else:
        found = vocab.get_indexer(flat)
        codes = np.where(found < 0, UNK_ID, found).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(codes, pa.int32()))
