from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from rayrec.features.vocab import PAD_ID, UNK_ID, Vocabulary


@given(st.lists(st.text(min_size=1, max_size=8), max_size=40))
def test_ids_do_not_depend_on_input_order(values):
    a = Vocabulary.build("v", values)
    b = Vocabulary.build("v", list(reversed(values)))
    assert a.values == b.values
    assert all(a.id_of(v) >= 2 for v in values if v not in ("<pad>", "<unk>"))


def test_reserved_ids_and_unknowns():
    v = Vocabulary.build("items", ["b", "a", "", None, "a"])
    assert v.values == ["<pad>", "<unk>", "a", "b"]
    assert v.id_of("zzz") == UNK_ID and v.id_of(None) == UNK_ID and PAD_ID == 0
    np.testing.assert_array_equal(v.encode(pd.Series(["b", "x", None])), [3, UNK_ID, UNK_ID])


def test_extend_keeps_every_existing_id(tmp_path: Path):
    old = Vocabulary.build("items", ["m", "c", "x"])
    new = old.extend(["a", "c", "z"])
    for value in old.values:
        assert new.id_of(value) == old.id_of(value)
    assert new.values[len(old):] == ["a", "z"]
    new.save(tmp_path)
    loaded = Vocabulary.load(tmp_path, "items")
    assert loaded.values == new.values and loaded.fingerprint() == new.fingerprint() != old.fingerprint()
