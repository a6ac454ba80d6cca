"""A preprocessing step served by a trained model instead of DSP: the track runs through
the model as a separation pass does (cut into windows, overlap-added), and the model's
cleaned output, say `noreverb`, becomes the track.

The model works in its own domain (rate, channels): the track goes in through
`to_model_input` and its cleaned output comes back through `OutputConverter`, as stems do,
so the result has the track's exact shape and everything after the step is unchanged.
The cleaned track is the one whole array this holds besides its input (and the input's
model-domain copy when the domains differ).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from models.audio.decode import Track
from models.audio.domain import to_model_input
from models.audio.encode import OutputConverter
from models.audio.samples import Samples
from models.engine.geometry import Geometry
from models.engine.track import WindowRunner, stream_track


def clean_with_model(
    track: Track,
    geometry: Geometry,
    run: WindowRunner,
    output: str,
    *,
    batch_size: int = 1,
    overlap: float = 0.25,
    shifts: int = 0,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Samples:
    """The track's samples replaced by the model's `output` source, same shape and type.
    `run` runs the model's windows; the engine options are those of the separation."""
    mix = torch.from_numpy(to_model_input(track, geometry.samplerate, geometry.audio_channels))
    cleaned = np.empty_like(track.samples)
    converter = OutputConverter(
        model_rate=geometry.samplerate,
        out_rate=track.sample_rate,
        out_channels=track.channels,
        out_layout=track.layout,
        total_frames=track.frames,
    )
    position = 0

    def put(piece: Samples) -> None:
        nonlocal position
        cleaned[:, position : position + piece.shape[-1]] = piece
        position += piece.shape[-1]

    stream_track(
        geometry,
        run,
        mix,
        lambda _start, block: put(converter.push(block[0].numpy())),
        sources=[output],
        batch_size=batch_size,
        overlap=overlap,
        shifts=shifts,
        seed=seed,
        on_progress=on_progress,
    )
    put(converter.finish())
    return cleaned
