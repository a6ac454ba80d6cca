"""The quality harness: SiSEC18's SDR on its own, and benchmarks/quality.py run on a small
MUSDB-style folder of rendered music with a random-weight model (its figures are noise,
but they must be well formed and their medians right)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from benchmarks.quality import main
from models.audio.decode import decode
from models.audio.encode import StemEncoder
from models.families.demucs.testmodel import make_test_model
from models.run import ModelStore, separate_file
from models.stems.routing import load_routing
from models.testing.quality import framewise_sdr, track_sdr
from models.testing.synth import add_noise, render_music

RATE = 44100


def test_a_perfect_estimate_scores_very_high() -> None:
    reference = render_music(3.0)[None]
    assert track_sdr(reference, reference.copy(), RATE)[0] > 60


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_known_noise_scores_its_snr(snr_db: float) -> None:
    reference = render_music(6.0, seed=1)
    estimate = add_noise(reference, snr_db, seed=2)
    assert track_sdr(reference[None], estimate[None], RATE)[0] == pytest.approx(snr_db, abs=0.5)


def test_a_delay_counts_as_error_as_in_museval() -> None:
    # A one-sample delay of white noise leaves an error twice the signal's energy: -3 dB.
    # bss_eval_sources (fast-bss-eval) would let its distortion filter undo the delay.
    reference = np.random.default_rng(0).normal(0, 0.1, (1, 2, 3 * RATE))
    estimate = np.roll(reference, 1, axis=-1)
    assert track_sdr(reference, estimate, RATE)[0] == pytest.approx(-3.01, abs=0.05)


def test_windows_where_any_reference_or_estimate_is_silent_are_left_out() -> None:
    rng = np.random.default_rng(3)
    window = 1000
    references = rng.normal(0, 1, (2, 2, 5 * window))
    estimates = references + 0.1 * rng.normal(0, 1, references.shape)  # 20 dB
    references[1, :, window : 2 * window] = 0  # source 1's reference is silent in window 1
    estimates[0, :, 3 * window : 4 * window] = 0  # source 0's estimate is silent in window 3
    scores = framewise_sdr(references, estimates, window)
    assert scores.shape == (2, 5)
    # Silence in one source leaves the window out for every source, as museval does.
    assert np.isnan(scores[:, [1, 3]]).all()
    kept = scores[:, [0, 2, 4]]
    assert np.all(np.abs(kept - 20) < 1)
    assert track_sdr(references, estimates, window) == pytest.approx(np.median(kept, axis=1))


def test_a_source_with_no_scored_window_has_no_figure() -> None:
    references = np.ones((2, 1, 100))
    references[1] = 0
    assert np.isnan(track_sdr(references, references + 0.5, 50)).all()


def test_windows_follow_museval_framing() -> None:
    rng = np.random.default_rng(4)
    references = rng.normal(0, 1, (1, 2, 3600))
    estimates = references + 0.1 * rng.normal(0, 1, references.shape)
    assert framewise_sdr(references, estimates, 1000).shape == (1, 3)  # partial tail dropped
    whole = framewise_sdr(references[..., :500], estimates[..., :500], 1000)
    error = estimates[..., :500] - references[..., :500]
    expected = 10 * np.log10(np.sum(references[..., :500] ** 2) / np.sum(error**2))
    assert whole == pytest.approx(np.array([[expected]]))


def test_a_short_estimate_is_padded_with_silence() -> None:
    references = np.ones((1, 1, 2000))
    short = framewise_sdr(references, np.ones((1, 1, 1500)), 1000)
    # Window 1 holds 500 correct frames and 500 missing ones: an error of half its energy.
    assert short[0, 0] == math.inf
    assert short[0, 1] == pytest.approx(10 * np.log10(2))


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shaped"):
        framewise_sdr(np.ones((2, 2, 10)), np.ones((1, 2, 10)), 5)


def write_audio(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    """Write float samples shaped (channels, frames) as 16-bit audio in `path`'s format."""
    fmt = path.suffix.lstrip(".")
    with StemEncoder(path, fmt, sample_rate=rate, channels=2, layout="stereo") as encoder:
        encoder.write(np.ascontiguousarray(samples, dtype=np.float32))


def write_track(folder: Path, seed: int, ext: str, drums_rate: int = RATE) -> None:
    """A MUSDB-like track folder: drums, bass, vocals and other, and their sum as the
    mixture. synth renders whole mixes, so each stem is a differently seeded rendering
    at a quarter of the level; the harness only needs the mixture to be their sum."""
    folder.mkdir(parents=True)
    stems = {
        name: 0.25 * render_music(3.0, seed=seed * 10 + index)
        for index, name in enumerate(("drums", "bass", "vocals", "other"))
    }
    for name, samples in stems.items():
        if name == "drums" and drums_rate != RATE:
            samples = soxr.resample(samples.T, RATE, drums_rate).T
        write_audio(folder / f"{name}.{ext}", samples, drums_rate if name == "drums" else RATE)
    write_audio(folder / f"mixture.{ext}", np.sum(list(stems.values()), axis=0))


@pytest.fixture(scope="module")
def musdb_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tracks (FLAC, and WAV with its drums at 48 kHz) and a folder without a mixture."""
    root = tmp_path_factory.mktemp("musdb")
    write_track(root / "Track A", seed=1, ext="flac")
    write_track(root / "Track B", seed=2, ext="wav", drums_rate=48000)
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("not a track")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A routing serving only drums and bass from a small random-weight htdemucs_6s, and
    the folder of its weights."""
    folder = tmp_path_factory.mktemp("quality-model")
    make_test_model(folder / "weights", "htdemucs_6s", small=True)
    routing = folder / "routing.yaml"
    routing.write_text(
        "models:\n  six:\n    family: demucs\n    weights: htdemucs_6s\n"
        "    outputs: {drums: drums, bass: bass}\n"
    )
    return routing, folder / "weights"


@dataclass(frozen=True)
class HarnessRun:
    """What one run of the harness gave: exit status, stdout, stderr and the JSON file."""

    status: int
    out: str
    err: str
    figures: dict[str, Any]


def run_harness(arguments: list[str]) -> tuple[int, str, str]:
    """Run the harness's main() in this process; return its status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(arguments)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def harness(
    musdb_like: Path, model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> HarnessRun:
    """The harness run once on the folder, on the CPU, writing its JSON."""
    routing, weights = model
    report = tmp_path_factory.mktemp("quality-out") / "quality.json"
    status, out, err = run_harness(
        [str(musdb_like), "--routing", str(routing), "--model-dir", str(weights), "--no-hub",
         "--device", "cpu", "--json", str(report)]
    )  # fmt: skip
    return HarnessRun(status, out, err, json.loads(report.read_text()))


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed table as rows of cells keyed by their first column's name."""
    lines = out.strip().splitlines()
    rows = {}
    for line in lines:
        # Track names may hold one space; cells never do.
        *name, first, second = line.split()
        rows[" ".join(name)] = [first, second]
    return rows


def test_one_finite_figure_per_served_stem_and_track(harness: HarnessRun) -> None:
    assert harness.status == 0
    tracks = harness.figures["tracks"]
    assert list(tracks) == ["Track A", "Track B"]
    for figures in tracks.values():
        assert list(figures) == ["drums", "bass"]
        assert all(math.isfinite(value) for value in figures.values())
    rows = table_rows(harness.out)
    assert rows["track"] == ["drums", "bass"]
    for name, figures in tracks.items():
        assert rows[name] == [f"{figures['drums']:.2f}", f"{figures['bass']:.2f}"]


def test_medians_are_the_medians_of_the_track_figures(harness: HarnessRun) -> None:
    tracks = harness.figures["tracks"]
    median = harness.figures["median"]
    for stem in ("drums", "bass"):
        expected = statistics.median(figures[stem] for figures in tracks.values())
        assert median[stem] == pytest.approx(expected)
    assert table_rows(harness.out)["median"] == [f"{median[s]:.2f}" for s in ("drums", "bass")]


def test_skipped_stems_are_named_once(harness: HarnessRun) -> None:
    assert harness.err.count("skipping") == 2
    assert "no catalogue name: other\n" in harness.err
    assert "the routing does not serve: vocals\n" in harness.err
    assert harness.figures["skipped_stems"] == ["other", "vocals"]


def test_a_track_figure_is_the_sdr_of_the_cli_stems(
    harness: HarnessRun, musdb_like: Path, model: tuple[Path, Path], tmp_path: Path
) -> None:
    # The same job path by hand on Track A (same rate throughout), scored directly.
    routing, weights = model
    store = ModelStore(load_routing(routing), model_dir=weights, use_hub=False)
    folder = musdb_like / "Track A"
    paths = separate_file(folder / "mixture.flac", ["drums", "bass"], tmp_path, store=store)
    for stem, path in paths.items():
        reference = decode(folder / f"{stem}.flac").samples.astype(np.float64)
        estimate = decode(path).samples.astype(np.float64)
        windows = [
            10 * np.log10(np.sum(part**2) / np.sum((other - part) ** 2))
            for part, other in zip(
                np.split(reference, 3, axis=-1), np.split(estimate, 3, axis=-1), strict=True
            )
        ]
        assert harness.figures["tracks"]["Track A"][stem] == pytest.approx(np.median(windows))


def test_no_scorable_stem_is_an_error(tmp_path: Path, model: tuple[Path, Path]) -> None:
    (tmp_path / "t").mkdir()
    samples = 0.1 * render_music(1.0)
    for name in ("mixture", "other"):
        write_audio(tmp_path / "t" / f"{name}.wav", samples)
    status, out, err = run_harness([str(tmp_path), "--routing", str(model[0])])
    assert status == 1
    assert out == ""
    assert err.endswith("is a catalogue stem the routing serves\n")


def test_a_folder_without_tracks_is_an_error(tmp_path: Path) -> None:
    status, _out, err = run_harness([str(tmp_path)])
    assert status == 1
    assert "no track folder with a mixture file" in err


def test_a_stem_given_twice_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    samples = 0.1 * render_music(1.0)
    for name in ("mixture.wav", "drums.wav", "drums.flac"):
        write_audio(tmp_path / "t" / name, samples)
    status, _out, err = run_harness([str(tmp_path)])
    assert status == 1
    assert "two files for 'drums'" in err
