"""The segment engine on demucs bags agrees with demucs's apply_model and streams its output."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from demucs.apply import BagOfModels, apply_model

from models.engine.batching import separate_windows
from models.engine.cuts import cut_track, window
from models.engine.track import collect_track, separate_track
from models.families import family
from models.families.demucs.family import TILING, DemucsModel
from models.families.demucs.loading import load_model
from models.stems.routing import ModelEntry

TOLERANCE = 1e-4


def random_mix(frames: int, seed: int = 0) -> torch.Tensor:
    """A stereo noise track with an offset, so that normalising matters."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, frames, generator=generator) * 0.1 + 0.02


def reference(bag: BagOfModels, mix: torch.Tensor, shifts: int = 0) -> torch.Tensor:
    """What demucs itself computes, normalised the way its separator normalises."""
    reference = mix.mean(0)
    mean, scale = reference.mean(), reference.std() + 1e-8
    normalised = (mix - mean) / scale
    out = apply_model(bag, normalised[None], split=True, overlap=0.25, shifts=shifts)[0]
    return out * scale + mean


def loaded(model_dir: Path, name: str) -> DemucsModel:
    return DemucsModel(load_model(name, model_dir=model_dir, use_hub=False))


@pytest.mark.slow
@pytest.mark.parametrize("segments", [0.4, 1.0, 2.2], ids=["short", "one", "several"])
def test_equals_apply_model_on_released_htdemucs(
    full_htdemucs: DemucsModel, segments: float
) -> None:
    mix = random_mix(int(full_htdemucs.geometry.segment_length * segments))
    expected = reference(full_htdemucs.bag, mix)
    for batch_size in (1, 4):
        actual = collect_track(full_htdemucs, mix, batch_size=batch_size)
        assert actual.shape == expected.shape
        assert (actual - expected).abs().max().item() < TOLERANCE


def test_equals_apply_model_for_a_bag(model_dir: Path) -> None:
    model = loaded(model_dir, "htdemucs_ft")
    assert len(model.bag.models) == 4
    mix = random_mix(int(model.geometry.segment_length * 1.7), seed=1)
    expected = reference(model.bag, mix)
    for batch_size in (1, 4):
        actual = collect_track(model, mix, batch_size=batch_size)
        assert (actual - expected).abs().max().item() < TOLERANCE


def test_equals_apply_model_with_seeded_shifts(model_dir: Path) -> None:
    # HDemucs draws no random numbers in its forward pass, so demucs's global
    # generator seeded alike draws the same shift offsets as ours.
    bag = loaded(model_dir, "hdemucs_mmi").bag
    # A 4-second segment (HDemucs takes any) keeps the test fast with several cuts.
    bag = BagOfModels(list(bag.models), bag.weights, segment=4.0)  # type: ignore[arg-type]
    model = DemucsModel(bag)
    mix = random_mix(int(model.geometry.segment_length * 2.3), seed=2)
    random.seed(5)
    expected = reference(bag, mix, shifts=2)
    actual = collect_track(model, mix, batch_size=2, shifts=2, seed=5)
    assert (actual - expected).abs().max().item() < TOLERANCE


def test_the_family_loads_a_routed_entry(model_dir: Path) -> None:
    entry = ModelEntry("six", "demucs", "htdemucs_6s", None, "mixture", {"vocals": "vocals"})
    model = family("demucs").load(entry, model_dir=model_dir, use_hub=False)
    assert model.geometry.sources == ("drums", "bass", "other", "vocals", "guitar", "piano")
    assert model.geometry.tiling == TILING


def test_shifts_are_repeatable_and_seeded(small_6s: DemucsModel) -> None:
    mix = random_mix(50_000, seed=3)
    first = collect_track(small_6s, mix, shifts=2, seed=1)
    again = collect_track(small_6s, mix, shifts=2, seed=1)
    other = collect_track(small_6s, mix, shifts=2, seed=2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_default_is_deterministic(small_6s: DemucsModel) -> None:
    mix = random_mix(30_000, seed=4)
    assert torch.equal(collect_track(small_6s, mix), collect_track(small_6s, mix))


def test_blocks_stream_in_order_and_cover_the_track_once(small_6s: DemucsModel) -> None:
    geometry = small_6s.geometry
    frames = int(geometry.segment_length * 4.5)
    mix = random_mix(frames, seed=5)
    starts: list[int] = []
    sizes: list[int] = []

    def on_block(start: int, block: torch.Tensor) -> None:
        starts.append(start)
        sizes.append(block.shape[-1])

    separate_track(small_6s, mix, on_block, sources=["vocals", "drums"], batch_size=2)
    assert starts[0] == 0
    assert all(a + n == b for a, n, b in zip(starts, sizes, starts[1:], strict=False))
    assert starts[-1] + sizes[-1] == frames
    # Streaming: no block is larger than what two batches of cuts can finish.
    assert max(sizes) <= 2 * geometry.segment_length
    assert len(starts) > 2


def test_windows_from_different_tracks_share_a_batch(small_6s: DemucsModel) -> None:
    geometry = small_6s.geometry
    first, second = random_mix(200_000, seed=6), random_mix(90_000, seed=7)
    cut_a = cut_track(first.shape[-1], geometry)[0]
    cut_b = cut_track(second.shape[-1], geometry)[0]
    together = separate_windows(small_6s, [window(first, cut_a), window(second, cut_b)])
    alone_a = separate_windows(small_6s, [window(first, cut_a)])[0]
    alone_b = separate_windows(small_6s, [window(second, cut_b)])[0]
    assert (together[0] - alone_a).abs().max().item() < TOLERANCE
    assert (together[1] - alone_b).abs().max().item() < TOLERANCE


def test_source_subset_matches_full_output(small_6s: DemucsModel) -> None:
    mix = random_mix(60_000, seed=8)
    full = collect_track(small_6s, mix)
    vocals = collect_track(small_6s, mix, sources=["vocals"])
    index = list(small_6s.geometry.sources).index("vocals")
    assert (vocals[0] - full[index]).abs().max().item() < TOLERANCE


def test_networks_with_zero_weight_are_skipped(model_dir: Path) -> None:
    model = loaded(model_dir, "htdemucs_ft")
    calls: list[int] = []
    hooks = [
        network.register_forward_hook(lambda *_args, index=index: calls.append(index))
        for index, network in enumerate(model.bag.models)
    ]
    try:
        separate_windows(model, [torch.zeros(2, model.geometry.segment_length)], sources=["vocals"])
    finally:
        for hook in hooks:
            hook.remove()
    # htdemucs_ft's weight matrix gives vocals to its fourth network only.
    assert calls == [3]


def test_reduced_precision_runs_and_stays_close(small_6s: DemucsModel) -> None:
    mix = random_mix(40_000, seed=9)
    cut = cut_track(mix.shape[-1], small_6s.geometry)[0]
    full = separate_windows(small_6s, [window(mix, cut)])[0]
    reduced = separate_windows(small_6s, [window(mix, cut)], precision="bf16")[0]
    assert reduced.dtype == torch.float32
    assert torch.isfinite(reduced).all()
    # bf16 really ran: the result is near fp32's but not equal to it.
    assert not torch.equal(reduced, full)
    assert (reduced - full).abs().max().item() < 0.1 * full.abs().max().item() + 1e-3


def test_cut_rules_follow_demucs(small_6s: DemucsModel) -> None:
    geometry = small_6s.geometry
    segment = geometry.segment_length
    cuts = cut_track(int(segment * 1.5), geometry, overlap=0.25)
    stride = int(0.75 * segment)
    assert [cut.start for cut in cuts] == [0, stride]
    last = cuts[-1]
    assert last.length == int(segment * 1.5) - stride
    # HTDemucs always sees its training length; the short cut is centred in context.
    assert last.window_length == segment
    assert last.window_start == stride - (segment - last.length) // 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_bad_options_are_refused(
    small_6s: DemucsModel, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        separate_track(small_6s, random_mix(1000), lambda _s, _b: None, **options)  # type: ignore[arg-type]
