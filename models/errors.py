"""Typed errors of the separation core.

Each error carries a message a user can act on. The serving layer maps these
classes to HTTP status codes in one place; nothing here knows about HTTP.
"""

from __future__ import annotations


class SeparationError(Exception):
    """Base class of every error the separation core raises on purpose."""


class AudioError(SeparationError):
    """The input is empty, truncated, not audio, or not decodable."""


class AudioLimitError(AudioError):
    """The input breaks a decoding limit (duration, decoded size, channels, rate)."""


class ModelMissingError(SeparationError):
    """Weights for a model could not be found in any of the places looked at."""

    def __init__(self, model: str, looked: list[str], reason: str = "") -> None:
        self.model = model
        self.looked = list(looked)
        places = "; ".join(self.looked) if self.looked else "nowhere"
        detail = f" ({reason})" if reason else ""
        super().__init__(f"weights for model {model!r} not found{detail}; looked in: {places}")


class ModelLoadError(SeparationError):
    """Weights were found but could not be loaded (bad checksum, corrupt file)."""


class ModelUnavailableError(SeparationError):
    """A model the request needs is not loaded and cannot be used now; the message names
    the model and what an operator can do."""


class StemError(SeparationError):
    """A requested stem cannot be produced."""


class UnknownStemError(StemError):
    """A stem name that is not in the catalogue."""


class UnservedStemError(StemError):
    """A catalogue stem that no configured model serves."""


class RoutingError(SeparationError):
    """The model routing configuration is invalid."""


class PreprocessError(SeparationError):
    """An unknown preprocessing step or an invalid preprocessing option."""
