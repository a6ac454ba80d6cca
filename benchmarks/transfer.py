"""Moving segments between deployments: one model window to a Separator and its stems back.

    python -m benchmarks.transfer [--rounds 5] [--batch 4] [--sources 1,2,4,6]
        [--json transfer.json]

A local Ray and Serve run an echo deployment in place of the Separator: it batches the
segments that arrive together with `@serve.batch`, as the Separator does, and answers each
with its row of one (batch, sources, channels, window) float32 tensor, the shape
`separate_windows` returns, so only the transfer is timed, not a model. The window is
htdemucs_6s's (its geometry read from the published architecture with the engine's own
code). The client sends `batch` segments at once, as a Pipeline task sends its segments in
flight, and waits for every reply. Payloads:

- `tensor`: torch tensors both ways, the reply a row of the batch (how the service sent
  segments before serve_app/deployments/payload.py);
- `tensor-own`: the same with each reply copied into its own storage first;
- `numpy`: float32 arrays both ways through payload.py (what the service sends now);
- `float16`: float16 arrays both ways, read back as float32: half the bytes, but lossy.

Rounds alternate payloads and source counts; the first round warms up and is not counted.
A row gives the median milliseconds per segment, the samples it moved (window out, stems
back) per second, and the milliseconds per second of audio: a segment covers
window x (1 - overlap) seconds of the track. The lines after the table say what float16
and bfloat16 rounding costs on synthetic music: SDR against float32 and the share of
16-bit output samples that change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
import torch
from ray import serve

from benchmarks.common import model_folder
from models.engine.geometry import Geometry
from models.families.demucs.family import DemucsModel
from models.families.demucs.loading import load_model
from models.testing.quality import sdr_db
from models.testing.synth import render_music
from serve_app.app import deployment
from serve_app.deployments.payload import from_payload, to_payload

COLUMNS = (
    f"{'payload':<11} {'sources':>7} {'MB moved':>8} {'ms/segment':>10} {'MB/s':>7} "
    f"{'ms/audio s':>10}"
)
INT16_SCALE = 32768.0  # the encoder's float to 16-bit convention (models/audio/encode.py)


@dataclass(frozen=True)
class Payload:
    """How samples go onto the wire and come back as a float32 tensor."""

    name: str
    send: Callable[[torch.Tensor], Any]
    reply: Callable[[torch.Tensor], Any]
    receive: Callable[[Any], torch.Tensor]
    bytes_per_sample: int


def _half(samples: torch.Tensor) -> npt.NDArray[np.float16]:
    return samples.numpy().astype(np.float16)


def _from_half(payload: npt.NDArray[np.float16]) -> torch.Tensor:
    return torch.from_numpy(payload.astype(np.float32))


PAYLOADS = {
    payload.name: payload
    for payload in (
        Payload("tensor", lambda t: t, lambda t: t, lambda t: t, 4),
        Payload("tensor-own", lambda t: t, lambda t: t.clone(), lambda t: t, 4),
        Payload("numpy", to_payload, to_payload, from_payload, 4),
        Payload("float16", _half, _half, _from_half, 2),
    )
}


@dataclass(frozen=True)
class Probe:
    """One segment in a payload's form, asking for `sources` stems back."""

    window: Any
    sources: int
    payload: str


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class Echo:
    """Answers each segment with its row of a batch output, as the Separator does."""

    def __init__(self, channels: int, window_length: int, batch: int) -> None:
        self.channels = channels
        self.window_length = window_length
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        batched: Any = self.reply  # serve.batch's setters are missing from its stubs
        batched.set_max_batch_size(batch)

    async def separate(self, probe: Probe) -> Any:
        """The probe's stems in its payload's form."""
        return await self.reply(probe)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def reply(self, probes: list[Probe]) -> list[Any]:
        """One batch output (made once per shape, so no time goes to computing it)."""
        shape = (len(probes), probes[0].sources)
        if shape not in self.outputs:
            self.outputs[shape] = torch.randn(*shape, self.channels, self.window_length)
        stems = self.outputs[shape]
        return [PAYLOADS[probe.payload].reply(stems[row]) for row, probe in enumerate(probes)]


@dataclass(frozen=True)
class Row:
    """The transfer cost of one payload and source count."""

    payload: str
    sources: int
    mb_moved: float  # window out and stems back, in the payload's bytes
    ms_per_segment: float
    mb_per_s: float
    ms_per_audio_s: float


def htdemucs_6s_geometry() -> Geometry:
    """htdemucs_6s's geometry, read as the service reads it from the published bag (with
    small random-weight networks: the window does not depend on their width)."""
    with tempfile.TemporaryDirectory() as root:
        folder = model_folder(Path(root), "htdemucs_6s", small=True)
        bag = load_model("htdemucs_6s", model_dir=folder, use_hub=False)
    return DemucsModel(bag).geometry


def rounding_cost(dtype: torch.dtype, seconds: float, rate: int) -> tuple[float, float]:
    """SDR (dB) of synthetic music rounded to `dtype` against float32, and the share of
    its 16-bit samples that change."""
    music = render_music(seconds, rate)
    rounded = torch.from_numpy(music).to(dtype).float().numpy()

    def pcm(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
        clipped = np.clip(samples, -1.0, 1.0)
        return np.minimum(np.rint(clipped * INT16_SCALE), INT16_SCALE - 1).astype(np.int16)

    changed = float(np.mean(pcm(music) != pcm(rounded)))
    return sdr_db(music, rounded), changed


def measure(
    handle: Any,
    geometry: Geometry,
    *,
    payloads: Sequence[str],
    source_counts: Sequence[int],
    batch: int,
    rounds: int,
    overlap: float,
) -> list[Row]:
    """Time `rounds` round trips of `batch` segments per payload and source count."""
    length = geometry.window_length(geometry.segment_length)
    window = torch.randn(geometry.audio_channels, length)
    hop_s = geometry.segment_length / geometry.samplerate * (1 - overlap)
    times: dict[tuple[str, int], list[float]] = {}
    for round_ in range(rounds + 1):
        for sources in source_counts:
            for name in payloads:
                payload = PAYLOADS[name]
                started = time.perf_counter()
                responses = [
                    handle.separate.remote(Probe(payload.send(window), sources, name))
                    for _ in range(batch)
                ]
                outputs = [payload.receive(response.result()) for response in responses]
                elapsed = time.perf_counter() - started
                for output in outputs:
                    assert output.shape == (sources, geometry.audio_channels, length)
                if round_:
                    times.setdefault((name, sources), []).append(elapsed / batch)
    rows = []
    for (name, sources), seconds in times.items():
        per_segment = statistics.median(seconds)
        moved = (1 + sources) * geometry.audio_channels * length
        moved_mb = moved * PAYLOADS[name].bytes_per_sample / 1e6
        rows.append(
            Row(
                payload=name,
                sources=sources,
                mb_moved=moved_mb,
                ms_per_segment=per_segment * 1000,
                mb_per_s=moved_mb / per_segment,
                ms_per_audio_s=per_segment * 1000 / hop_s,
            )
        )
    return sorted(rows, key=lambda row: (row.sources, list(payloads).index(row.payload)))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its table (and write it as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, after a warm-up")
    parser.add_argument("--batch", type=int, default=4, help="segments sent at once")
    parser.add_argument(
        "--sources", default="1,2,4,6", help="stem counts asked back, comma-separated"
    )
    parser.add_argument(
        "--payloads", default=",".join(PAYLOADS), help="payloads to time, comma-separated"
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="the engine's overlap")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs Ray may schedule on")
    parser.add_argument("--json", type=Path, help="also write the table here")
    options = parser.parse_args(argv)
    if options.rounds < 1 or options.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    payloads = options.payloads.split(",")
    unknown = set(payloads) - set(PAYLOADS)
    if unknown:
        parser.error(f"unknown payloads {sorted(unknown)}; known: {', '.join(PAYLOADS)}")
    source_counts = [int(count) for count in options.sources.split(",")]
    geometry = htdemucs_6s_geometry()
    length = geometry.window_length(geometry.segment_length)
    window_s = geometry.segment_length / geometry.samplerate
    load = os.getloadavg()[0]
    ray.init(num_cpus=options.cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(
            deployment(Echo).bind(geometry.audio_channels, length, options.batch),
            name="transfer",
            route_prefix=None,
        )
        rows = measure(
            handle,
            geometry,
            payloads=payloads,
            source_counts=source_counts,
            batch=options.batch,
            rounds=options.rounds,
            overlap=options.overlap,
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    lossy = {
        str(dtype).removeprefix("torch."): rounding_cost(dtype, window_s, geometry.samplerate)
        for dtype in (torch.float16, torch.bfloat16)
    }
    print(
        f"One htdemucs_6s segment between deployments: window {geometry.audio_channels} x "
        f"{length} samples ({window_s:g} s, {window_s * (1 - options.overlap):g} s of audio at "
        f"overlap {options.overlap:g}), {options.batch} at once, {options.rounds} rounds, "
        f"load average {load:.1f} at the start"
    )
    print()
    print(COLUMNS)
    for row in rows:
        print(
            f"{row.payload:<11} {row.sources:>7} {row.mb_moved:>8.1f} {row.ms_per_segment:>10.1f} "
            f"{row.mb_per_s:>7.0f} {row.ms_per_audio_s:>10.2f}"
        )
    print()
    for name, (sdr, changed) in lossy.items():
        print(
            f"{name} rounding of synthetic music: SDR {sdr:.1f} dB against float32, "
            f"{changed:.1%} of 16-bit samples change"
        )
    if options.json is not None:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": load,
            "window_length": length,
            "batch": options.batch,
            "rounds": options.rounds,
            "overlap": options.overlap,
            "rows": [asdict(row) for row in rows],
            "rounding": {
                name: {"sdr_db": sdr, "int16_changed": changed}
                for name, (sdr, changed) in lossy.items()
            },
        }
        options.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
