"""SCNet: the sparse compression network of MSST's `scnet` model type.

The complex STFT of a chunk (a rectangular window, the channels' real and imaginary
parts stacked as [c0_re, c0_im, c1_re, ...]) goes through a U-Net over frequency.
Each encoder level cuts the bins into a low, a mid and a high band, downsamples each by
its own stride with a convolution across frequency, runs a gated convolution stack along
time in every band and mixes the result with a 3x3 convolution; the bottleneck is a
stack of dual-path LSTMs (across frequency, then along time) that alternate between the
frames and their real FFT. The decoder adds each level's skip, gates it and upsamples
every band back with a transposed convolution. The last level gives one spectrogram per
stem, which the inverse STFT turns back into audio.

The chunk is padded at the end to an odd number of hops, so that the STFT has an even
number of frames, the one count the inverse FFT along time gives back; the output is
trimmed to the input's length. Parameter names are MSST's, so its checkpoints load with
`strict=True`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import ModelLoadError

BAND_COUNT = 3  # low, mid, high: MSST's SCNet always has three


class SCNetConfigError(ModelLoadError):
    """An SCNet `model:` section this implementation cannot build."""


@dataclass(frozen=True)
class Band:
    """One frequency band: its share of the bins, and the downsampling across them."""

    share: float
    stride: int
    kernel: int

    def padding(self, bins: int) -> tuple[int, int]:
        """Zero bins added (below, above) before the band's strided convolution."""
        total = self.kernel - 1 if self.stride == 1 else -bins % self.stride
        return total // 2, total - total // 2


def band_edges(bins: int, bands: Sequence[Band]) -> list[tuple[int, int]]:
    """The (start, end) bins of the low, mid and high band of `bins` bins."""
    low, mid = bands[0].share, bands[1].share
    # The same float expressions as MSST's, so that the edges round the same way.
    first, second = math.ceil(bins * low), math.ceil(bins * (low + mid))
    return [(0, first), (first, second), (second, bins)]


class TimeConvolutions(nn.Module):
    """Residual gated convolutions along time: norm, GLU, depthwise conv, norm, SiLU, 1x1."""

    def __init__(self, channels: int, depth: int, *, compress: int, kernel: int) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, 2 * hidden, kernel, padding=kernel // 2),
                nn.GLU(1),
                nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden),
                nn.GroupNorm(1, hidden),
                nn.SiLU(),
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(abs(depth))
        )

    def forward(self, x: Tensor) -> Tensor:
        """(batch, channels, frames) -> the same shape."""
        for layer in self.layers:
            x = x + layer(x)
        return x


class BandDownsampler(nn.Module):
    """Cuts the bins into the bands and downsamples each with its own convolution."""

    def __init__(self, channels_in: int, channels_out: int, bands: Sequence[Band]) -> None:
        super().__init__()
        self.bands = tuple(bands)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in, channels_out, (band.kernel, 1), (band.stride, 1))
            for band in bands
        )

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[int]]:
        """(b, c, bins, t) -> each band downsampled, and each band's bin count before."""
        outputs, sizes = [], []
        for conv, band, (start, end) in zip(
            self.convs, self.bands, band_edges(x.shape[2], self.bands), strict=True
        ):
            outputs.append(conv(F.pad(x[:, :, start:end], (0, 0, *band.padding(end - start)))))
            sizes.append(end - start)
        return outputs, sizes


class EncoderLevel(nn.Module):
    """Band downsampling, time convolutions within each band, then a 3x3 mix of all bins."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        bands: Sequence[Band],
        *,
        depths: Sequence[int],
        compress: int,
        kernel: int,
    ) -> None:
        super().__init__()
        self.SDlayer = BandDownsampler(channels_in, channels_out, bands)
        self.conv_modules = nn.ModuleList(
            TimeConvolutions(channels_out, depth, compress=compress, kernel=kernel)
            for depth in depths
        )
        self.globalconv = nn.Conv2d(channels_out, channels_out, 3, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[int], list[int]]:
        """The level's output, its skip, and each band's bin count after and before."""
        bands, sizes_before = self.SDlayer(x)
        processed = []
        for convolutions, band in zip(self.conv_modules, bands, strict=True):
            b, c, bins, t = band.shape
            # Every bin of every item is a sequence of frames for the 1-d convolutions.
            along_time = band.transpose(1, 2).reshape(b * bins, c, t)
            out = convolutions(along_time).reshape(b, bins, c, t).transpose(1, 2)
            processed.append(F.gelu(out))
        skip = torch.cat(processed, 2)
        return self.globalconv(skip), skip, [band.shape[2] for band in processed], sizes_before


class Fusion(nn.Module):
    """Adds the encoder's skip, then a gated 3x3 convolution (GLU over channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = x + skip
        return F.glu(self.conv(torch.cat([x, x], 1)), dim=1)


class BandUpsampler(nn.Module):
    """Upsamples each band with a transposed convolution, centred back to its bin count."""

    def __init__(self, channels_in: int, channels_out: int, bands: Sequence[Band]) -> None:
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(channels_in, channels_out, (band.kernel, 1), (band.stride, 1))
            for band in bands
        )

    def forward(self, x: Tensor, sizes: Sequence[int], sizes_before: Sequence[int]) -> Tensor:
        outputs = []
        start = 0
        for convtr, size, target in zip(self.convtrs, sizes, sizes_before, strict=True):
            out = convtr(x[:, :, start : start + size])
            offset = abs(target - out.shape[2]) // 2
            outputs.append(out[:, :, offset : offset + target])
            start += size
        return torch.cat(outputs, 2)


class DecoderLevel(nn.ModuleList):
    """Fusion with the skip, then band upsampling (MSST's keys `0` and `1`)."""

    def __init__(self, fusion: Fusion, upsampler: BandUpsampler) -> None:
        super().__init__([fusion, upsampler])

    def forward(
        self, x: Tensor, skip: Tensor, sizes: Sequence[int], sizes_before: Sequence[int]
    ) -> Tensor:
        fusion, upsampler = cast(Fusion, self[0]), cast(BandUpsampler, self[1])
        return cast(Tensor, upsampler(fusion(x, skip), sizes, sizes_before))


class DualPathLayer(nn.Module):
    """A residual bidirectional LSTM across frequency, then one along time."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(channels, hidden, num_layers=1, bidirectional=True, batch_first=True)
            for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, channels) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        """(b, channels, bins, frames) -> the same shape."""
        b, c, bins, t = x.shape
        across = self.norm_layers[0](x).permute(0, 3, 2, 1).reshape(b * t, bins, c)
        across = self.linear_layers[0](self.lstm_layers[0](across)[0])
        x = x + across.reshape(b, t, bins, c).permute(0, 3, 2, 1)
        along = self.norm_layers[1](x).permute(0, 2, 3, 1).reshape(b * bins, t, c)
        along = self.linear_layers[1](self.lstm_layers[1](along)[0])
        return x + along.reshape(b, bins, t, c).permute(0, 3, 1, 2)


class SeparationNet(nn.Module):
    """Dual-path layers that alternate between the frames and their real FFT over time.

    After an even-numbered layer the frames become their spectrum, real and imaginary
    parts stacked on the channels (twice the channels, frames // 2 + 1 bins); after an
    odd-numbered one they are turned back. An even number of layers ends on frames.
    """

    def __init__(self, channels: int, *, expand: int, num_layers: int) -> None:
        super().__init__()
        self.dp_modules = nn.ModuleList(
            DualPathLayer(channels * (2 if i % 2 else 1), expand) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.dp_modules):
            x = layer(x)
            x = _from_time_spectrum(x) if i % 2 else _to_time_spectrum(x)
        return x


# Both conversions cast to float32 as MSST does, so that under autocast the FFT is exact.
def _to_time_spectrum(x: Tensor) -> Tensor:
    spectrum = torch.fft.rfft(x.float(), dim=3, norm="ortho")
    return torch.cat([spectrum.real, spectrum.imag], 1)


def _from_time_spectrum(x: Tensor) -> Tensor:
    real, imaginary = x.float().chunk(2, dim=1)
    return torch.fft.irfft(torch.complex(real, imaginary), dim=3, norm="ortho")


class SCNet(nn.Module):
    """MSST's SCNet: (batch, channels, samples) -> (batch, stems, channels, samples)."""

    def __init__(
        self,
        *,
        sources: Sequence[str] = ("drums", "bass", "other", "vocals"),
        audio_channels: int = 2,
        dims: Sequence[int] = (4, 32, 64, 128),
        nfft: int = 4096,
        hop_size: int = 1024,
        win_size: int = 4096,
        normalized: bool = True,
        band_SR: Sequence[float] = (0.175, 0.392, 0.433),
        band_stride: Sequence[int] = (1, 4, 16),
        band_kernel: Sequence[int] = (3, 4, 16),
        conv_depths: Sequence[int] = (3, 2, 1),
        compress: int = 4,
        conv_kernel: int = 3,
        num_dplayer: int = 6,
        expand: int = 1,
    ) -> None:
        super().__init__()
        _check_options(
            dims=dims,
            audio_channels=audio_channels,
            bands={"band_SR": band_SR, "band_stride": band_stride, "band_kernel": band_kernel},
            conv_depths=conv_depths,
            conv_kernel=conv_kernel,
            num_dplayer=num_dplayer,
        )
        self.sources = tuple(sources)
        self.audio_channels = audio_channels
        self.n_fft, self.hop_length, self.win_length = nfft, hop_size, win_size
        self.normalized = normalized
        bands = [Band(*values) for values in zip(band_SR, band_stride, band_kernel, strict=True)]
        self.encoder = nn.ModuleList(
            EncoderLevel(
                dims[i],
                dims[i + 1],
                bands,
                depths=conv_depths,
                compress=compress,
                kernel=conv_kernel,
            )
            for i in range(len(dims) - 1)
        )
        # Deepest level first; the shallowest gives every stem's spectrogram.
        self.decoder = nn.ModuleList(
            DecoderLevel(
                Fusion(dims[i + 1]),
                BandUpsampler(dims[i + 1], dims[i] * (len(self.sources) if i == 0 else 1), bands),
            )
            for i in reversed(range(len(dims) - 1))
        )
        self.separation_net = SeparationNet(dims[-1], expand=expand, num_layers=num_dplayer)

    @classmethod
    def from_config(cls, model: Mapping[str, Any]) -> SCNet:
        """The network an MSST config's `model:` section describes."""
        unknown = sorted(set(model) - set(inspect.signature(cls).parameters))
        if unknown:
            raise SCNetConfigError(f"scnet: unknown model options {unknown}")
        return cls(**model)

    def _stft_arguments(self, device: torch.device) -> dict[str, Any]:
        return {
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "win_length": self.win_length,
            # MSST passes no window, which torch takes as a rectangular one.
            "window": torch.ones(self.win_length, device=device),
            "center": True,
            "normalized": self.normalized,
        }

    def forward(self, audio: Tensor) -> Tensor:
        """Separate a batch of chunks of any length into one waveform per source."""
        b, channels, length = audio.shape
        # An odd number of hops gives an even number of frames, which the FFT over time
        # in the separation net needs to invert exactly.
        hops = length // self.hop_length + 1
        padded = (hops + 1 - hops % 2) * self.hop_length
        stft = self._stft_arguments(audio.device)
        spectrum = torch.stft(
            F.pad(audio, (0, padded - length)).reshape(b * channels, padded),
            **stft,
            return_complex=True,
        )
        bins, frames = spectrum.shape[-2:]
        x = torch.view_as_real(spectrum).permute(0, 3, 1, 2).reshape(b, 2 * channels, bins, frames)
        levels = []
        for level in self.encoder:
            x, skip, sizes, sizes_before = level(x)
            levels.append((skip, sizes, sizes_before))
        x = self.separation_net(x)
        for decode in self.decoder:
            x = decode(x, *levels.pop())
        # Channels come out as (source, channel, re/im), flattened.
        stems = x.reshape(-1, 2, bins, frames).permute(0, 2, 3, 1).contiguous()
        waveforms = torch.istft(torch.view_as_complex(stems), **stft)
        return waveforms.reshape(b, len(self.sources), channels, -1)[..., :length]


def _check_options(
    *,
    dims: Sequence[int],
    audio_channels: int,
    bands: Mapping[str, Sequence[float]],
    conv_depths: Sequence[int],
    conv_kernel: int,
    num_dplayer: int,
) -> None:
    """Raise SCNetConfigError for options whose network could not run a chunk."""
    if len(dims) < 2:
        raise SCNetConfigError(f"scnet: dims needs at least two entries, got {list(dims)}")
    if dims[0] != 2 * audio_channels:
        raise SCNetConfigError(
            f"scnet: dims[0] must be 2 * audio_channels = {2 * audio_channels} "
            f"(real and imaginary parts), not {dims[0]}"
        )
    for name, values in {**bands, "conv_depths": conv_depths}.items():
        if len(values) != BAND_COUNT:
            raise SCNetConfigError(f"scnet: {name} needs {BAND_COUNT} entries, got {list(values)}")
    if conv_kernel % 2 != 1:
        raise SCNetConfigError(f"scnet: conv_kernel must be odd, not {conv_kernel}")
    if num_dplayer % 2:
        raise SCNetConfigError(
            f"scnet: num_dplayer must be even (the last layer returns to frames), not {num_dplayer}"
        )
