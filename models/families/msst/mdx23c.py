"""MDX23C: the TFC-TDF v3 network of MSST's `mdx23c` model type, built from its config.

A U-Net over the complex spectrogram of a stereo chunk. The STFT keeps the lowest
`dim_f` bins and splits them into `num_subbands` blocks stacked on the channel axis;
each level is a stack of TFC-TDF blocks (3x3 convolutions around a bottlenecked linear
layer across frequency) followed by a strided convolution, mirrored by transposed
convolutions on the way up. The decoder's output is multiplied by the first
convolution's and mapped, with the input spectrogram, to one spectrogram per stem.
Parameter names and order are MSST's, so its checkpoints load with `strict=True`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class MDX23CConfig:
    """What the network reads from an MSST config: `audio`, `model` and the stem names."""

    stems: tuple[str, ...]
    chunk_size: int
    n_fft: int
    hop_length: int
    dim_f: int
    num_channels: int
    norm: str
    act: str
    num_subbands: int
    num_scales: int
    scale: tuple[int, int]
    num_blocks_per_scale: int
    channels: int
    growth: int
    bottleneck_factor: int

    @classmethod
    def from_msst(cls, config: Mapping[str, Any]) -> MDX23CConfig:
        """Read a whole MSST config (its `audio`, `model` and `training` sections)."""
        audio, model, training = config["audio"], config["model"], config["training"]
        target = training.get("target_instrument")
        stems = (target,) if target else tuple(training["instruments"])
        scale = tuple(int(s) for s in model["scale"])
        if len(scale) != 2:
            raise ValueError(f"model.scale must be (time, frequency), got {scale}")
        result = cls(
            stems=tuple(str(s) for s in stems),
            chunk_size=int(audio["chunk_size"]),
            n_fft=int(audio["n_fft"]),
            hop_length=int(audio["hop_length"]),
            dim_f=int(audio["dim_f"]),
            num_channels=int(audio["num_channels"]),
            norm=str(model["norm"]),
            act=str(model["act"]),
            num_subbands=int(model["num_subbands"]),
            num_scales=int(model["num_scales"]),
            scale=(scale[0], scale[1]),
            num_blocks_per_scale=int(model["num_blocks_per_scale"]),
            channels=int(model["num_channels"]),
            growth=int(model["growth"]),
            bottleneck_factor=int(model["bottleneck_factor"]),
        )
        result.check()
        return result

    def check(self) -> None:
        """Raise ValueError if a chunk cannot pass through the U-Net and back."""
        frames = self.chunk_size // self.hop_length + 1
        time_factor = self.scale[0] ** self.num_scales
        if frames % time_factor:
            raise ValueError(
                f"a chunk of {self.chunk_size} samples has {frames} frames, "
                f"not a multiple of scale[0]**num_scales = {time_factor}"
            )
        if self.dim_f % self.num_subbands:
            raise ValueError(f"dim_f {self.dim_f} is not a multiple of {self.num_subbands}")
        freq_factor = self.scale[1] ** self.num_scales
        if (self.dim_f // self.num_subbands) % freq_factor:
            raise ValueError(
                f"dim_f/num_subbands = {self.dim_f // self.num_subbands} is not a multiple "
                f"of scale[1]**num_scales = {freq_factor}"
            )
        if self.dim_f > self.n_fft // 2 + 1:
            raise ValueError(f"dim_f {self.dim_f} exceeds the {self.n_fft // 2 + 1} bins")


def norm_factory(name: str) -> NormFactory:
    """The normalisation layer MSST names `name`, as a function of the channel count."""
    if name == "BatchNorm":
        return nn.BatchNorm2d
    if name == "InstanceNorm":
        return lambda channels: nn.InstanceNorm2d(channels, affine=True)
    if name.startswith("GroupNorm"):
        groups = int(name.removeprefix("GroupNorm"))
        return lambda channels: nn.GroupNorm(num_groups=groups, num_channels=channels)
    return lambda channels: nn.Identity()


def activation(name: str) -> nn.Module:
    """The activation MSST names `name`: gelu (exact), relu or elu<alpha>."""
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    if name.startswith("elu"):
        return nn.ELU(float(name.removeprefix("elu")))
    raise ValueError(f"unknown activation {name!r}")


class Rescale(nn.Module):
    """Norm, activation and a strided (transposed, when up) convolution by `scale`."""

    def __init__(
        self, in_c: int, out_c: int, scale: tuple[int, int], norm: NormFactory, act: str, up: bool
    ) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = nn.Sequential(
            norm(in_c),
            activation(act),
            conv(in_c, out_c, kernel_size=scale, stride=scale, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TfcTdfBlock(nn.Module):
    """Time-frequency convolutions around a time-distributed bottleneck across frequency."""

    def __init__(
        self, in_c: int, c: int, bins: int, bottleneck: int, norm: NormFactory, act: str
    ) -> None:
        super().__init__()
        self.tfc1 = nn.Sequential(
            norm(in_c), activation(act), nn.Conv2d(in_c, c, 3, 1, 1, bias=False)
        )
        self.tdf = nn.Sequential(
            norm(c),
            activation(act),
            nn.Linear(bins, bins // bottleneck, bias=False),
            norm(c),
            activation(act),
            nn.Linear(bins // bottleneck, bins, bias=False),
        )
        self.tfc2 = nn.Sequential(norm(c), activation(act), nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.shortcut = nn.Conv2d(in_c, c, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.tfc1(x)
        x = x + self.tdf(x)
        return self.tfc2(x) + shortcut


class TfcTdf(nn.Module):
    """`count` TFC-TDF blocks; the first maps `in_c` channels to `c`."""

    def __init__(
        self,
        in_c: int,
        c: int,
        count: int,
        bins: int,
        bottleneck: int,
        norm: NormFactory,
        act: str,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TfcTdfBlock(in_c if i == 0 else c, c, bins, bottleneck, norm, act) for i in range(count)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class EncoderLevel(nn.Module):
    """One level down: TFC-TDF blocks, then a strided convolution."""

    def __init__(self, tfc_tdf: TfcTdf, downscale: Rescale) -> None:
        super().__init__()
        self.tfc_tdf = tfc_tdf
        self.downscale = downscale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The level's output (the skip to its decoder) and its downscaled copy."""
        skip = self.tfc_tdf(x)
        return skip, self.downscale(skip)


class DecoderLevel(nn.Module):
    """One level up: a transposed convolution, then TFC-TDF blocks over it and the skip."""

    def __init__(self, upscale: Rescale, tfc_tdf: TfcTdf) -> None:
        super().__init__()
        self.upscale = upscale
        self.tfc_tdf = tfc_tdf

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.tfc_tdf(torch.cat([self.upscale(x), skip], 1))


class MDX23C(nn.Module):
    """MSST's TFC_TDF_net: (batch, channels, samples) -> (batch, stems, channels, samples').

    The output has `hop * (samples // hop)` samples (the ISTFT is given no length), and its
    bins at and above `dim_f` are zero.
    """

    def __init__(self, config: MDX23CConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        norm = norm_factory(config.norm)
        spec_channels = config.num_subbands * config.num_channels * 2
        c, growth = config.channels, config.growth
        bins = config.dim_f // config.num_subbands
        blocks, bottleneck = config.num_blocks_per_scale, config.bottleneck_factor

        self.first_conv = nn.Conv2d(spec_channels, c, 1, 1, 0, bias=False)
        self.encoder_blocks = nn.ModuleList()
        for _ in range(config.num_scales):
            self.encoder_blocks.append(
                EncoderLevel(
                    TfcTdf(c, c, blocks, bins, bottleneck, norm, config.act),
                    Rescale(c, c + growth, config.scale, norm, config.act, up=False),
                )
            )
            bins //= config.scale[1]
            c += growth
        self.bottleneck_block = TfcTdf(c, c, blocks, bins, bottleneck, norm, config.act)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(config.num_scales):
            upscale = Rescale(c, c - growth, config.scale, norm, config.act, up=True)
            bins *= config.scale[1]
            c -= growth
            self.decoder_blocks.append(
                DecoderLevel(upscale, TfcTdf(2 * c, c, blocks, bins, bottleneck, norm, config.act))
            )
        self.final_conv = nn.Sequential(
            nn.Conv2d(c + spec_channels, c, 1, 1, 0, bias=False),
            activation(config.act),
            nn.Conv2d(c, len(config.stems) * spec_channels, 1, 1, 0, bias=False),
        )

    @classmethod
    def from_msst(cls, config: Mapping[str, Any]) -> MDX23C:
        """Build the network an MSST config describes (random weights)."""
        return cls(MDX23CConfig.from_msst(config))

    @property
    def stems(self) -> Sequence[str]:
        """Output stem names, in output order."""
        return self.config.stems

    def _window(self, device: torch.device) -> torch.Tensor:
        return torch.hann_window(self.config.n_fft, periodic=True, device=device)

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """(b, c, t) -> (b, 2c, dim_f, frames): channels as [c0_re, c0_im, c1_re, ...]."""
        b, c, t = audio.shape
        spec = torch.stft(
            audio.reshape(b * c, t),
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            window=self._window(audio.device),
            center=True,
            return_complex=True,
        )
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2)
        spec = spec.reshape(b, c * 2, spec.shape[-2], spec.shape[-1])
        return spec[..., : self.config.dim_f, :]

    def waveform(self, spec: torch.Tensor) -> torch.Tensor:
        """(..., 2c, dim_f, frames) -> (..., c, samples), the missing bins taken as zero."""
        # Under bf16 autocast the network hands back bf16, which torch.complex refuses.
        spec = spec.float()
        *lead, c2, bins, frames = spec.shape
        n = self.config.n_fft // 2 + 1
        pad = spec.new_zeros((*lead, c2, n - bins, frames))
        spec = torch.cat([spec, pad], -2).reshape(-1, 2, n, frames).permute(0, 2, 3, 1)
        audio = torch.istft(
            torch.complex(spec[..., 0], spec[..., 1]),
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            window=self._window(spec.device),
            center=True,
        )
        return audio.reshape(*lead, c2 // 2, -1)

    def _to_subbands(self, x: torch.Tensor) -> torch.Tensor:
        k = self.config.num_subbands
        b, c, f, t = x.shape
        return x.reshape(b, c * k, f // k, t)

    def _from_subbands(self, x: torch.Tensor) -> torch.Tensor:
        k = self.config.num_subbands
        b, c, f, t = x.shape
        return x.reshape(b, c // k, f * k, t)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Separate a batch of chunks into `len(stems)` waveforms each."""
        mix = self._to_subbands(self.spectrogram(audio))
        first = self.first_conv(mix)
        # Time before frequency from here on: the TDF layers are Linear over the bins.
        x = first.transpose(-1, -2)
        skips = []
        for level in self.encoder_blocks:
            skip, x = level(x)
            skips.append(skip)
        x = self.bottleneck_block(x)
        for level in self.decoder_blocks:
            x = level(x, skips.pop())
        x = x.transpose(-1, -2) * first
        x = self._from_subbands(self.final_conv(torch.cat([mix, x], 1)))
        b, c, f, t = x.shape
        stems = len(self.config.stems)
        return self.waveform(x.reshape(b, stems, c // stems, f, t))
