"""Derived stems expand into signed sums of the mixture and model stems."""

from __future__ import annotations

import numpy as np

from models.stems.catalogue import MIXTURE
from models.stems.derive import expand
from models.stems.routing import DerivedStem

DERIVED = {
    "instrumental": DerivedStem("instrumental", MIXTURE, ("vocals",)),
    "keys": DerivedStem("keys", "instrumental", ("drums", "bass")),
    "strings": DerivedStem("strings", "keys", ("instrumental",)),
}


def test_nested_derivations_expand_to_model_stems() -> None:
    keys = expand("keys", DERIVED)
    assert dict(keys.terms) == {MIXTURE: 1.0, "vocals": -1.0, "drums": -1.0, "bass": -1.0}
    assert keys.stems() == {"vocals", "drums", "bass"}


def test_terms_that_cancel_disappear() -> None:
    # strings = keys - instrumental = -drums - bass: the mixture and vocals cancel.
    assert dict(expand("strings", DERIVED).terms) == {"drums": -1.0, "bass": -1.0}


def test_apply_combines_pieces() -> None:
    mixture = np.full((2, 4), 1.0, dtype=np.float32)
    pieces = {name: np.full((2, 4), 0.25, dtype=np.float32) for name in ("vocals", "drums", "bass")}
    result = expand("keys", DERIVED).apply(pieces, mixture)
    assert result.dtype == np.float32
    assert np.allclose(result, 0.25)
