"""How a segment's samples cross a Serve handle between the Pipeline and a Separator.

They travel as float32 numpy arrays, not torch tensors. Ray pickles a torch tensor with
its whole storage, so a segment's stems, a row of the Separator's batch output, would
carry the entire batch, and both sides copy. A numpy array goes through the object store
as an out-of-band buffer of exactly its own bytes, and the reader gets a view of shared
memory. The samples are the same float32 values either way, so stems stay bit-identical.

An array read back from the object store is read-only. The engine never writes a
window or a segment's output in place (it stacks windows into a new batch and weights
outputs into new tensors), so the reader wraps it as is, with no copy.
"""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
import torch

SamplesPayload = npt.NDArray[np.float32]


def to_payload(samples: torch.Tensor) -> SamplesPayload:
    """The samples of a CPU float32 tensor as a numpy array sharing its memory."""
    if samples.dtype != torch.float32:
        raise TypeError(f"segment payloads are float32, got {samples.dtype}")
    return samples.numpy()


def from_payload(payload: SamplesPayload) -> torch.Tensor:
    """A tensor on the payload's memory (read-only when it came from the object store:
    callers must not write it in place)."""
    if payload.flags.writeable:
        return torch.from_numpy(payload)
    with warnings.catch_warnings():
        # torch warns once per process that it cannot mark a tensor read-only; no caller
        # writes these, which is why they are not copied.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        return torch.from_numpy(payload)
