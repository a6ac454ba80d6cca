"""The array type of audio between decoding and encoding: float32, (channels, frames)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]
