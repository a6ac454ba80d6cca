"""What every preprocessing step shares: the device it runs on and the full-scale limit.

Denoise, Deecho and Dereverb each promise to run on "cpu" or "cuda" (refusing anything
else with a PreprocessError) and never to raise the peak above full scale; both rules
live here once so that the three steps cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import torch

from models.audio.samples import Samples
from models.engine.devices import resolve_device
from models.errors import PreprocessError


def step_device(device: str) -> torch.device:
    """The torch device for a step; an unknown or absent device is a PreprocessError."""
    try:
        return resolve_device(device)
    except ValueError as error:
        raise PreprocessError(str(error)) from error


def limit_peak(samples: Samples) -> Samples:
    """`samples` as float32 and C-contiguous, scaled down as a whole if they peak above 1.0
    (scaled, not clipped, so the waveform keeps its shape)."""
    peak = float(np.abs(samples).max(initial=0.0))
    if peak > 1.0:
        samples = samples / peak
    return np.ascontiguousarray(samples, dtype=np.float32)
