"""MSST's chunked inference: our `demix` against MSST's on the reference fixtures.

MDX23C's runs are reproduced end to end with the tiny network. The BS-RoFormer runs
need a RoFormer, so for them only what is independent of the model is checked: the
plan (padding, chunks, fade flags) and where batch size may change the stored outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.families.msst.chunking import ChunkPlan, demix, fade_window, plan_chunks
from models.families.msst.mdx23c import MDX23C
from tests.models.families.msst.reference import tiny_network

FIXTURES = Path(__file__).parent / "fixtures"
MDX23C_DEMIX = np.load(FIXTURES / "mdx23c" / "tiny_demix.npz")
ROFORMER_DEMIX = np.load(FIXTURES / "bs_roformer" / "tiny_demix.npz")


@pytest.fixture(scope="module")
def network() -> MDX23C:
    return tiny_network()


def run_settings(demix_fixture: np.lib.npyio.NpzFile, run: str) -> dict[str, int]:
    return {
        "chunk_size": int(demix_fixture[f"{run}__chunk_size"]),
        "num_overlap": int(demix_fixture[f"{run}__num_overlap"]),
        "batch_size": int(demix_fixture[f"{run}__batch_size"]),
    }


def run_input(demix_fixture: np.lib.npyio.NpzFile, run: str) -> np.ndarray:
    return demix_fixture[str(demix_fixture[f"{run}__input"])]


def chunk_dependent(batch: torch.Tensor) -> torch.Tensor:
    """A stand-in model whose two stems depend on the whole chunk, not just each sample."""
    loudness = batch.abs().mean(dim=(-1, -2), keepdim=True)
    return torch.stack([batch * (1 + loudness), batch.flip(-1)], dim=1)


def normalised_weights(plan: ChunkPlan) -> np.ndarray:
    """(chunks, length): each chunk's share of every output sample, borders cropped."""
    weights = np.zeros((len(plan.chunks), plan.padded_length), dtype=np.float64)
    row = 0
    for batch in plan.batches:
        window = fade_window(
            plan.chunk_size, plan.fade_size, fade_in=batch.fade_in, fade_out=batch.fade_out
        ).numpy()
        for chunk in batch.chunks:
            weights[row, chunk.start : chunk.start + chunk.length] = window[: chunk.length]
            row += 1
    with np.errstate(invalid="ignore"):
        shares = np.nan_to_num(weights / weights.sum(axis=0))
    return shares[:, plan.border : plan.padded_length - plan.border]


@pytest.mark.parametrize("run", [str(r) for r in MDX23C_DEMIX["run_names"]])
def test_mdx23c_demix_equals_msst(network: MDX23C, run: str) -> None:
    track = torch.from_numpy(run_input(MDX23C_DEMIX, run))
    output = demix(network, track, **run_settings(MDX23C_DEMIX, run)).numpy()
    np.testing.assert_allclose(output, MDX23C_DEMIX[f"{run}__output"], rtol=0, atol=1e-5)


def test_mdx23c_unbatched_equals_msst_batched(network: MDX23C) -> None:
    """At overlap 4 no batch of 3 ends in a fade that reaches the track: only rounding."""
    settings = {**run_settings(MDX23C_DEMIX, "long_o4_b3"), "batch_size": 1}
    one = demix(network, torch.from_numpy(MDX23C_DEMIX["track"]), **settings).numpy()
    np.testing.assert_allclose(one, MDX23C_DEMIX["long_o4_b3__output"], rtol=0, atol=1e-6)


def test_window_fades_linearly_from_and_to_zero() -> None:
    window = fade_window(16384, 1638)
    assert window.dtype == torch.float32
    assert window[0] == 0 and window[-1] == 0
    assert torch.equal(window[:1638], torch.linspace(0, 1, 1638))
    assert torch.equal(window[-1638:], torch.linspace(1, 0, 1638))
    assert torch.all(window[1638:-1638] == 1)
    assert torch.all(fade_window(16384, 1638, fade_in=False)[:1638] == 1)
    assert torch.all(fade_window(16384, 1638, fade_out=False)[-1638:] == 1)


@pytest.mark.parametrize("run", [str(r) for r in ROFORMER_DEMIX["run_names"]])
def test_roformer_runs_are_planned_as_msst_pads_them(run: str) -> None:
    settings = run_settings(ROFORMER_DEMIX, run)
    length = run_input(ROFORMER_DEMIX, run).shape[-1]
    plan = plan_chunks(length, **settings)
    chunk, overlap = settings["chunk_size"], settings["num_overlap"]
    assert plan.fade_size == chunk // 10
    assert plan.step == chunk // overlap
    # The long track (3.5 chunks) is padded by a border each side; the short one is not.
    assert plan.border == (chunk - plan.step if run.startswith("long") else 0)
    starts = [c.start for c in plan.chunks]
    assert starts == list(range(0, plan.padded_length, plan.step))
    for c in plan.chunks:
        assert c.length == min(chunk, plan.padded_length - c.start)
        assert c.padding == ("reflect" if c.length > chunk // 2 else "zeros")
    assert [len(b.chunks) for b in plan.batches[:-1]] == [settings["batch_size"]] * (
        len(plan.batches) - 1
    )


def test_fade_flags_follow_the_last_chunk_of_each_batch() -> None:
    settings = run_settings(ROFORMER_DEMIX, "long_o2_b5")
    plan = plan_chunks(ROFORMER_DEMIX["track"].shape[-1], **settings)
    assert len(plan.chunks) == 10
    assert [(b.fade_in, b.fade_out) for b in plan.batches] == [(True, True), (True, False)]
    one = plan_chunks(ROFORMER_DEMIX["track"].shape[-1], **{**settings, "batch_size": 1})
    flags = [(b.fade_in, b.fade_out) for b in one.batches]
    assert flags == [(False, True)] + [(True, True)] * 8 + [(True, False)]


def test_a_track_up_to_one_and_a_half_chunks_is_not_padded_at_overlap_4() -> None:
    assert plan_chunks(24576, chunk_size=16384, num_overlap=4, batch_size=1).border == 0
    assert plan_chunks(24577, chunk_size=16384, num_overlap=4, batch_size=1).border == 12288


def test_without_overlap_there_is_no_border() -> None:
    plan = plan_chunks(50000, chunk_size=16384, num_overlap=1, batch_size=2)
    assert plan.border == 0
    assert [c.start for c in plan.chunks] == [0, 16384, 32768, 49152]
    track = torch.from_numpy(ROFORMER_DEMIX["track"])
    output = demix(chunk_dependent, track, chunk_size=16384, num_overlap=1, batch_size=2)
    assert output.shape == (2, *track.shape)


def test_last_batch_fade_flag_explains_msst_s_batch_5_run() -> None:
    """Batches of 5 differ from batches of 1 exactly where the fades differ (README)."""
    settings = run_settings(ROFORMER_DEMIX, "long_o2_b5")
    length = ROFORMER_DEMIX["track"].shape[-1]
    five = normalised_weights(plan_chunks(length, **settings))
    one = normalised_weights(plan_chunks(length, **{**settings, "batch_size": 1}))
    fades_differ = np.abs(five - one).max(axis=0) > 0
    stored = np.abs(ROFORMER_DEMIX["long_o2_b5__output"] - ROFORMER_DEMIX["long_o2_b1__output"])
    outputs_differ = stored.max(axis=(0, 1)) > 1e-6
    assert np.flatnonzero(outputs_differ)[[0, -1]].tolist() == [47517, 57343]
    assert not np.any(outputs_differ & ~fades_differ)
    assert stored[..., ~fades_differ].max() < 1e-7
    ours = [
        demix(chunk_dependent, torch.from_numpy(ROFORMER_DEMIX["track"]), **s).numpy()
        for s in (settings, {**settings, "batch_size": 1})
    ]
    ours_differ = np.abs(ours[0] - ours[1]).max(axis=(0, 1)) > 1e-6
    assert not np.any(ours_differ & ~fades_differ)
    assert ours_differ[outputs_differ].mean() > 0.99


@pytest.mark.parametrize("family_demix", [MDX23C_DEMIX, ROFORMER_DEMIX], ids=["mdx23c", "bs"])
def test_first_sample_of_an_unpadded_track_is_zero_when_batched(
    family_demix: np.lib.npyio.NpzFile,
) -> None:
    track = torch.from_numpy(family_demix["short_track"])
    batched = run_settings(family_demix, "short_o4_b3")
    assert np.all(family_demix["short_o4_b3__output"][:, :, 0] == 0)
    assert torch.all(demix(chunk_dependent, track, **batched)[:, :, 0] == 0)
    unbatched = demix(chunk_dependent, track, **{**batched, "batch_size": 1})
    assert torch.all(unbatched[:, :, 0] != 0)


@pytest.mark.parametrize("overlap", [2, 4])
def test_batch_size_only_rounds_where_no_batch_ends_in_a_full_fade(overlap: int) -> None:
    track = torch.from_numpy(ROFORMER_DEMIX["track"])
    settings = {"chunk_size": 16384, "num_overlap": overlap}
    one = demix(chunk_dependent, track, batch_size=1, **settings)
    for batch_size in (2, 3):
        other = demix(chunk_dependent, track, batch_size=batch_size, **settings)
        np.testing.assert_allclose(other.numpy(), one.numpy(), rtol=0, atol=1e-6)


def test_a_track_that_is_one_sample_is_separated() -> None:
    track = torch.full((2, 1), 0.5)
    output = demix(chunk_dependent, track, chunk_size=100, num_overlap=2, batch_size=1)
    assert output.shape == (2, 2, 1)


def test_a_model_returning_too_few_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="the model returned 10 samples for a chunk"):
        demix(
            lambda b: b[:, None, :, :10],
            torch.zeros(2, 500),
            **{"chunk_size": 100, "num_overlap": 2, "batch_size": 1},
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"chunk_size": 9, "num_overlap": 1, "batch_size": 1}, "chunk_size must be at least 10"),
        ({"chunk_size": 100, "num_overlap": 0, "batch_size": 1}, "num_overlap must be in 1..100"),
        ({"chunk_size": 100, "num_overlap": 101, "batch_size": 1}, "num_overlap must be in"),
        ({"chunk_size": 100, "num_overlap": 2, "batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_a_plan_refuses_settings_outside_its_ranges(settings: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_chunks(500, **settings)
    assert plan_chunks(500, chunk_size=100, num_overlap=2, batch_size=1).chunks
