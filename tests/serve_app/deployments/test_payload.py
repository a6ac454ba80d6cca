"""Segment payloads: a row of a batch travels as its own bytes, and a read-only array
from the object store becomes a tensor on the same memory without a warning."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from serve_app.deployments.payload import from_payload, to_payload


def test_a_row_of_a_batch_pickles_as_its_own_bytes() -> None:
    batch = torch.randn(8, 2, 2, 1000)
    row = batch[3]
    # Ray pickles with protocol 5, where an array is an out-of-band buffer of its view.
    payload = to_payload(row)
    assert len(pickle.dumps(payload, protocol=5)) < row.numel() * 4 + 1000
    assert np.shares_memory(payload, batch.numpy())


def test_a_read_only_payload_is_wrapped_without_a_copy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    array.setflags(write=False)
    tensor = from_payload(array)  # warnings are errors in the tests
    assert tensor.data_ptr() == array.ctypes.data
    assert torch.equal(tensor, torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_only_float32_samples_travel() -> None:
    with pytest.raises(TypeError, match="float32"):
        to_payload(torch.zeros(2, 4, dtype=torch.float64))
