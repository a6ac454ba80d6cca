"""Derived stems as sums of the mixture and model stems, with signs.

A derivation in the routing says `instrumental = mixture - vocals`; derivations may build
on one another (`keys = instrumental - drums - bass`). Expanding each into its terms
(`mixture - vocals - drums - bass`) lets the separation compute it block by block beside
the model stems it needs, in the output domain, so that the stems it was made from and
the derived stem add back up to the decoded input exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from models.audio.samples import Samples
from models.stems.catalogue import MIXTURE
from models.stems.routing import DerivedStem


@dataclass(frozen=True)
class Combination:
    """A derived stem as (stem or MIXTURE, coefficient) terms."""

    name: str
    terms: tuple[tuple[str, float], ...]

    def stems(self) -> frozenset[str]:
        """The model stems this combination reads (not the mixture)."""
        return frozenset(name for name, _ in self.terms if name != MIXTURE)

    def apply(self, pieces: Mapping[str, Samples], mixture: Samples) -> Samples:
        """Combine equally long pieces of the stems and of the mixture."""
        result = np.zeros_like(mixture)
        for name, coefficient in self.terms:
            result += coefficient * (mixture if name == MIXTURE else pieces[name])
        return result


def expand(name: str, derived: Mapping[str, DerivedStem]) -> Combination:
    """Expand derived stem `name` into terms over the mixture and model stems."""
    totals: dict[str, float] = {}

    def add(stem: str, sign: float) -> None:
        if stem in derived:
            entry = derived[stem]
            add(entry.base, sign)
            for part in entry.minus:
                add(part, -sign)
        else:
            totals[stem] = totals.get(stem, 0.0) + sign

    add(name, 1.0)
    terms = tuple((stem, sign) for stem, sign in totals.items() if sign != 0.0)
    return Combination(name, terms)
