"""The Pipeline's own CPU work per track, beside the model: decoding the upload and
encoding the stems, for one song of a given length in each output format.

    python -m benchmarks.pipeline_cost --seconds 210 --stems 4

Times the process's CPU (not wall) seconds of `decode` on an MP3 upload and of
`StemEncoder` writing `--stems` stems in each format, in blocks as the Pipeline writes
them. The README's "Running at scale" sizes the Pipeline's CPUs from these figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from models.audio.decode import DecodeLimits, decode
from models.audio.encode import FORMATS, StemEncoder

RATE = 44100
BLOCK_FRAMES = 5 * RATE  # the Pipeline hands the encoder a few seconds at a time


def song(seconds: float) -> np.ndarray:
    """A stereo noise song, quiet enough not to clip."""
    generator = np.random.default_rng(0)
    return (generator.standard_normal((2, int(seconds * RATE))) * 0.1).astype(np.float32)


def encode(samples: np.ndarray, path: Path, fmt: str) -> float:
    """CPU seconds to encode `samples` to `path`."""
    start = time.process_time()
    with StemEncoder(path, fmt, sample_rate=RATE, channels=2, layout="stereo") as encoder:
        for offset in range(0, samples.shape[1], BLOCK_FRAMES):
            encoder.write(samples[:, offset : offset + BLOCK_FRAMES])
    return time.process_time() - start


def main() -> None:
    """Print the CPU seconds of decoding and of encoding the stems in each format."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=210.0, help="song length")
    parser.add_argument("--stems", type=int, default=4, help="stems per task")
    args = parser.parse_args()
    samples = song(args.seconds)
    with tempfile.TemporaryDirectory() as root:
        upload = Path(root) / "upload.mp3"
        encode(samples, upload, "mp3")
        start = time.process_time()
        decode(upload, DecodeLimits(max_duration_s=args.seconds + 60))
        decoding = time.process_time() - start
        print(f"{args.seconds:.0f} s stereo song, {args.stems} stems, CPU seconds:")
        print(f"decode the MP3 upload ({upload.stat().st_size / 1e6:.1f} MB): {decoding:.2f}")
        for fmt in FORMATS:
            path = Path(root) / f"stem.{fmt}"
            seconds = encode(samples, path, fmt)
            size = path.stat().st_size / 1e6
            print(
                f"encode {args.stems} stems as {fmt}: {seconds * args.stems:.2f} "
                f"({size:.1f} MB a stem)"
            )


if __name__ == "__main__":
    main()
