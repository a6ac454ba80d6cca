"""The stem catalogue: every stem name the service knows, grouped as in the design.

The catalogue is fixed and independent of which models are installed; whether a
stem can actually be produced is a question for the routing (`models.stems.routing`).
`parse_stems` turns what a caller sent into a clean tuple of catalogue names, so
that every entry point refuses unknown names with the same message.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.errors import UnknownStemError

MIXTURE = "mixture"
"""The input itself: usable as a pass input or a derivation base, but not a stem."""

STEM_GROUPS: dict[str, tuple[str, ...]] = {
    "vocals": ("vocals", "male_vocal", "female_vocal", "lead_vocal", "back_vocal"),
    "guitar": ("guitar", "acoustic_guitar", "electric_guitar", "rhythm_guitar", "solo_guitar"),
    "drums": ("drums", "kick_drum", "snare_drum", "toms", "hi_hat", "ride", "crash"),
    "keys": ("piano", "keys"),
    "strings and winds": ("strings", "winds"),
    "other": ("bass", "instrumental"),
}

ALL_STEMS: tuple[str, ...] = tuple(stem for group in STEM_GROUPS.values() for stem in group)

DEFAULT_STEMS: tuple[str, ...] = ("drums", "bass", "piano", "guitar")

# Stems no public checkpoint is known to serve well enough to route. Weak or unverified
# uploads exist for keys and winds; none has published figures we could check.
NO_PUBLIC_MODEL: tuple[str, ...] = (
    "acoustic_guitar",
    "electric_guitar",
    "rhythm_guitar",
    "solo_guitar",
    "strings",
    "keys",
    "winds",
)

ADDING_A_MODEL = (
    "put an MSST-format checkpoint (its YAML config and weights) in the model folder and "
    'add a routing entry for it (README, "Adding a model")'
)
"""How an operator makes a stem servable that no public checkpoint serves."""

_KNOWN: frozenset[str] = frozenset(ALL_STEMS)


def _unknown(names: Sequence[object]) -> UnknownStemError:
    """Build the error for unknown names, listing every valid name so the caller can fix it."""
    bad = ", ".join(repr(name) for name in names)
    noun = "stem" if len(names) == 1 else "stems"
    return UnknownStemError(f"unknown {noun} {bad}; valid stems: {', '.join(ALL_STEMS)}")


def parse_stems(value: Sequence[str] | None) -> tuple[str, ...]:
    """Validate requested stem names, dropping repeats and keeping the caller's order.

    None or an empty sequence means DEFAULT_STEMS. A bare string counts as one name,
    not as a sequence of one-letter names.
    """
    if not value:
        return DEFAULT_STEMS
    names: Sequence[object] = (value,) if isinstance(value, str) else value
    unique = tuple(dict.fromkeys(names))
    unknown = [name for name in unique if name not in _KNOWN]
    if unknown:
        raise _unknown(unknown)
    return tuple(str(name) for name in unique)
