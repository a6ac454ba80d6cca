"""Speed and effect of the preprocessing steps on synthetic music.

    python -m benchmarks.preprocess --seconds 60 --memory-minutes 2 10

Speed: each step, then all three in order, on a stereo 44.1 kHz song of `--seconds`
(render_music), seconds and real-time factor (audio seconds per second of work; the
target for all three together is at least 10). Effect: the measures the tests assert,
on a 10-second clip with two seeds, so the README can show the figures. Memory: the peak
that Denoise allocates through numpy (tracemalloc) on songs of `--memory-minutes`, as a multiple
of the input's size (Dereverb's torch allocations are not traced, so it is left out).
"""

from __future__ import annotations

import argparse
import math
import time
import tracemalloc

import numpy as np
import numpy.typing as npt

from models.preprocess.catalogue import STEPS
from models.preprocess.denoise import DenoiseOptions, denoise
from models.preprocess.steps import preprocess
from models.testing.quality import echo_level_db, energy_db, sdr_db, snr_improvement_db
from models.testing.synth import add_echo, add_noise, render_music, reverberate, room_impulse

RATE = 44100
Samples = npt.NDArray[np.float32]


def speed(seconds: float) -> None:
    """Print seconds and real-time factor per step and for all three."""
    song = add_noise(render_music(seconds, RATE, seed=1), 20.0)
    print(f"speed on {seconds:g} s of stereo {RATE} Hz audio, CPU:")
    for steps in [[step] for step in STEPS] + [list(STEPS)]:
        start = time.perf_counter()
        preprocess(song, RATE, steps)
        spent = time.perf_counter() - start
        print(f"  {' + '.join(steps):28s} {spent:6.2f} s  {seconds / spent:6.1f}x real time")


def denoise_memory(minutes: float) -> None:
    """Print Denoise's traced peak allocation on a noisy song of `minutes`."""
    clip = render_music(10.0, RATE, seed=0)
    song = add_noise(np.tile(clip, (1, math.ceil(minutes * 6))), 10.0, seed=1)
    tracemalloc.start()
    try:
        preprocess(song, RATE, ["Denoise"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ratio = peak / song.nbytes
    print(f"  Denoise on {minutes:g} min: peak {peak / 1e6:.0f} MB, {ratio:.1f}x the input")


def effect(seed: int) -> None:
    """Print the improvement each step makes on its own degradation."""
    clean = render_music(10.0, RATE, seed=seed)
    print(f"effect, 10 s clip, seed {seed}:")
    # Pink noise with and without its sub-audio part (about half of `add_noise`'s pink power).
    for colour, lowest_hz in (("white", 0.0), ("pink", 0.0), ("pink", 20.0)):
        for snr in (5.0, 10.0):
            noisy = add_noise(clean, snr, colour, seed, lowest_hz=lowest_hz, sample_rate=RATE)
            gain = snr_improvement_db(clean, noisy, preprocess(noisy, RATE, ["Denoise"]))
            gated = denoise(noisy, RATE, DenoiseOptions(mode="stationary"))
            gate = snr_improvement_db(clean, noisy, gated)
            above = f" above {lowest_hz:g} Hz" if lowest_hz else ""
            label = f"{colour} noise{above} at {snr:g} dB SNR"
            print(f"  Denoise  {label}: SNR +{gain:.1f} dB (gate +{gate:.1f})")
    for delay_s, gain in ((0.08, 0.3), (0.15, 0.6), (0.27, 0.45), (0.4, 0.6)):
        echoed = add_echo(clean, delay_s, gain, RATE)
        cleaned = preprocess(echoed, RATE, ["Deecho"])
        delay = round(delay_s * RATE)
        drop = echo_level_db(echoed, delay, clean) - echo_level_db(cleaned, delay, clean)
        better = sdr_db(clean, cleaned) - sdr_db(clean, echoed)
        label = f"echo {delay_s * 1000:.0f} ms x{gain}"
        print(f"  Deecho   {label}: echo -{drop:.1f} dB, SDR +{better:.1f} dB")
    for rt60 in (0.6, 1.2):
        response = room_impulse(rt60, RATE, seed=seed)
        # A room adds level; bring the wet mix (and its target alike) below full scale,
        # or the step's own peak limit would be counted as an effect.
        wet = reverberate(clean, response, sample_rate=RATE)
        gain = 0.9 / float(np.abs(wet).max())
        wet = (wet * gain).astype(np.float32)
        target = (reverberate(clean, response, upto_s=0.05, sample_rate=RATE) * gain).astype(
            np.float32
        )
        cleaned = preprocess(wet, RATE, ["Dereverb"])
        better = sdr_db(target, cleaned) - sdr_db(target, wet)
        tail = energy_db(wet - target) - energy_db(cleaned - target)
        print(f"  Dereverb RT60 {rt60} s: SDR +{better:.1f} dB, late tail -{tail:.1f} dB")
    for step in STEPS:
        kept = sdr_db(clean, preprocess(clean, RATE, [step]))
        print(f"  {step:8s} on clean music: SDR {kept:.1f} dB")


def main() -> None:
    """Run the speed and effect measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--memory-minutes", type=float, nargs="*", default=[2.0, 10.0])
    args = parser.parse_args()
    speed(args.seconds)
    if args.memory_minutes:
        print("memory, stereo 44100 Hz float32 input:")
    for minutes in args.memory_minutes:
        denoise_memory(minutes)
    for seed in args.seeds:
        effect(seed)


if __name__ == "__main__":
    main()
