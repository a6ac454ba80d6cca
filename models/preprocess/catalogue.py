"""The preprocessing steps by name, as the API names them: Denoise, Deecho, Dereverb.

Whatever order a caller lists them in, they run in this fixed order (models/preprocess/
steps.py says why). This module only names and checks them, so the HTTP side can refuse an
unknown step without importing the steps themselves (they need torch).
"""

from __future__ import annotations

from collections.abc import Sequence

from models.errors import PreprocessError

STEPS = ("Denoise", "Deecho", "Dereverb")


def parse_steps(value: Sequence[str] | None) -> tuple[str, ...]:
    """Validate step names (any letter case) and return them in the order they run."""
    if value is None:
        return ()
    if isinstance(value, str):
        raise PreprocessError("preprocessing steps must be a list of names, not one string")
    canonical = {step.lower(): step for step in STEPS}
    unknown = [name for name in value if str(name).lower() not in canonical]
    if unknown:
        raise PreprocessError(
            f"unknown preprocessing step(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(STEPS)}"
        )
    asked = {canonical[name.lower()] for name in value}
    return tuple(step for step in STEPS if step in asked)
