"""Preprocessing before separation: Denoise, Deecho and Dereverb, in that order.

The API names the steps as MusicGPT does (`Denoise`, `Deecho`, `Dereverb`); whatever
order a caller lists them in, they run in that fixed order, because each assumes the
one before it has run (echo detection is thrown off by broadband noise, and WPE
mistakes a discrete echo for reverberation). Each step lives in its own module as a
pure function of (samples, sample rate, options); this module only orders them and
checks that every step kept the shape of the audio; their names live in
models/preprocess/catalogue.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.audio.samples import Samples
from models.preprocess.catalogue import parse_steps
from models.preprocess.deecho import DeechoOptions, deecho
from models.preprocess.denoise import DenoiseOptions, denoise
from models.preprocess.dereverb import DereverbOptions, dereverb


@dataclass(frozen=True)
class PreprocessOptions:
    """Options of every step; the defaults are what the service uses."""

    denoise: DenoiseOptions = field(default_factory=DenoiseOptions)
    deecho: DeechoOptions = field(default_factory=DeechoOptions)
    dereverb: DereverbOptions = field(default_factory=DereverbOptions)


def preprocess(
    samples: Samples,
    sample_rate: int,
    steps: Sequence[str] | None,
    options: PreprocessOptions | None = None,
    *,
    device: str = "cpu",
    on_step: Callable[[str], None] | None = None,
) -> Samples:
    """Apply the named steps to (channels, frames) float32 samples, in their fixed order."""
    chosen = options or PreprocessOptions()
    runners: dict[str, Callable[[Samples], Samples]] = {
        "Denoise": lambda audio: denoise(audio, sample_rate, chosen.denoise, device=device),
        "Deecho": lambda audio: deecho(audio, sample_rate, chosen.deecho, device=device),
        "Dereverb": lambda audio: dereverb(audio, sample_rate, chosen.dereverb, device=device),
    }
    for step in parse_steps(steps):
        if on_step is not None:
            on_step(step)
        result = runners[step](samples)
        if result.shape != samples.shape or result.dtype != np.float32:
            raise RuntimeError(f"{step} changed the audio's shape or type")
        samples = result
    return samples
