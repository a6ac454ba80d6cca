"""The parts shared by the band-split RoFormers (BS-RoFormer and Mel-Band RoFormer).

Both networks turn a stereo chunk into a complex STFT, lay its bins out
frequency-major with the channels interleaved, split that into bands, run
alternating time and band transformers, and estimate a complex mask per stem and
band. Module and parameter names follow the MSST checkpoints, so that a published
state dict loads strictly; the rotary embedding is GPT-J style (interleaved
pairs), as rotary-embedding-torch computes it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Keys of MSST's `model:` section that only matter for training or for an
# attention kernel: the network and its weights are the same without them.
TRAINING_ONLY_KEYS = frozenset(
    {
        "dim_freqs_in",
        "flash_attn",
        "multi_stft_resolution_loss_weight",
        "multi_stft_resolutions_window_sizes",
        "multi_stft_hop_size",
        "multi_stft_normalized",
        "use_torch_checkpoint",
    }
)


class RoformerConfigError(ModelLoadError):
    """A RoFormer `model:` section this implementation cannot build."""


# The `model:` options both RoFormers take; each adds its own band options.
SHARED_ARGUMENTS = frozenset(
    {
        "dim",
        "depth",
        "stereo",
        "num_stems",
        "time_transformer_depth",
        "freq_transformer_depth",
        "linear_transformer_depth",
        "dim_head",
        "heads",
        "attn_dropout",
        "ff_dropout",
        "stft_n_fft",
        "stft_hop_length",
        "stft_win_length",
        "stft_normalized",
        "mask_estimator_depth",
        "mlp_expansion_factor",
        "skip_connection",
        "zero_dc",
        "use_pope",
    }
)


def model_arguments(
    section: Mapping[str, Any], accepted: frozenset[str], *, family: str
) -> dict[str, Any]:
    """The constructor arguments in an MSST `model:` section, checked.

    Training-only keys are dropped. `sage_attention` selects SageAttention, a
    quantised kernel for the same attention: the weights are the same, so it is
    dropped with a log line and exact attention runs instead (MSST itself refuses
    the key). Options that change the network and are not implemented, and keys
    no MSST version knows, raise `RoformerConfigError`.
    """
    arguments: dict[str, Any] = {}
    for key, value in section.items():
        if key in TRAINING_ONLY_KEYS:
            continue
        if key == "sage_attention":
            if value:
                logger.warning(
                    "%s: sage_attention is ignored; exact attention computes the same model",
                    family,
                )
            continue
        if key not in accepted:
            raise RoformerConfigError(f"{family}: unknown model option {key!r}")
        arguments[key] = value
    unsupported = {
        "linear_transformer_depth": 0,
        "skip_connection": False,
        "use_pope": False,
    }
    for key, neutral in unsupported.items():
        if arguments.pop(key, neutral) != neutral:
            raise RoformerConfigError(
                f"{family}: {key}={section[key]!r} is not supported (only {neutral!r})"
            )
    return arguments


class RMSNorm(nn.Module):
    """Unit L2 norm over the last axis, times sqrt(dim) and a learnt gain."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over consecutive pairs of a head's features.

    `freqs` is a non-trainable parameter, so it is saved under every attention
    layer that shares this module, as in the published checkpoints.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate(self, x: Tensor) -> Tensor:
        """Rotate `x` (..., positions, dim_head) by its positions 0..n-1."""
        positions = torch.arange(x.shape[-2], device=x.device, dtype=self.freqs.dtype)
        angles = torch.outer(positions, self.freqs).repeat_interleave(2, dim=-1)
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return (x * angles.cos() + rotated * angles.sin()).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions and a sigmoid gate per head."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        dropout: float,
        rotary_embed: RotaryEmbedding,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.rotary_embed = rotary_embed
        inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        batch, length, _ = x.shape
        qkv = self.to_qkv(x).view(batch, length, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q = self.rotary_embed.rotate(q)
        k = self.rotary_embed.rotate(k)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        gates = self.to_gates(x).transpose(1, 2).unsqueeze(-1).sigmoid()
        out = (out * gates).transpose(1, 2).reshape(batch, length, -1)
        projected: Tensor = self.to_out(out)
        return projected


class FeedForward(nn.Module):
    """Pre-normed MLP, four times as wide inside, exact GELU."""

    def __init__(self, dim: int, *, dropout: float, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class Transformer(nn.Module):
    """Residual attention and feed-forward layers, with an optional final RMSNorm."""

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        heads: int,
        dim_head: int,
        attn_dropout: float,
        ff_dropout: float,
        rotary_embed: RotaryEmbedding,
        norm_output: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(
                        dim,
                        heads=heads,
                        dim_head=dim_head,
                        dropout=attn_dropout,
                        rotary_embed=rotary_embed,
                    ),
                    FeedForward(dim, dropout=ff_dropout),
                ]
            )
            for _ in range(depth)
        )
        self.norm: nn.Module = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            attention, feed_forward = cast(nn.ModuleList, layer)
            x = attention(x) + x
            x = feed_forward(x) + x
        out: Tensor = self.norm(x)
        return out


def axial_transformers(
    dim: int,
    *,
    depth: int,
    time_transformer_depth: int,
    freq_transformer_depth: int,
    heads: int,
    dim_head: int,
    attn_dropout: float,
    ff_dropout: float,
    norm_output: bool,
) -> nn.ModuleList:
    """`depth` pairs `[time transformer, band transformer]`, as the checkpoints name them.

    Each transformer kind shares one rotary embedding across the stack.
    """
    time_rotary = RotaryEmbedding(dim_head)
    freq_rotary = RotaryEmbedding(dim_head)

    def transformer(layers: int, rotary: RotaryEmbedding) -> Transformer:
        return Transformer(
            dim,
            depth=layers,
            heads=heads,
            dim_head=dim_head,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            rotary_embed=rotary,
            norm_output=norm_output,
        )

    return nn.ModuleList(
        nn.ModuleList(
            [
                transformer(time_transformer_depth, time_rotary),
                transformer(freq_transformer_depth, freq_rotary),
            ]
        )
        for _ in range(depth)
    )


def run_axial(layers: nn.ModuleList, x: Tensor) -> Tensor:
    """Apply `axial_transformers` to (batch, frames, bands, dim): the time
    transformer attends across frames, then the band transformer across bands."""
    batch, frames, bands, dim = x.shape
    for layer in layers:
        time_transformer, freq_transformer = cast(nn.ModuleList, layer)
        x = x.transpose(1, 2).reshape(batch * bands, frames, dim)
        x = time_transformer(x)
        x = x.view(batch, bands, frames, dim).transpose(1, 2).reshape(-1, bands, dim)
        x = freq_transformer(x)
        x = x.view(batch, frames, bands, dim)
    return x


class BandSplit(nn.Module):
    """One RMSNorm and Linear per band, from its features to `dim`."""

    def __init__(self, dim: int, dims_in: Sequence[int]) -> None:
        super().__init__()
        self.dims_in = tuple(dims_in)
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(dim_in), nn.Linear(dim_in, dim)) for dim_in in self.dims_in
        )

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frames, sum(dims_in)) -> (batch, frames, bands, dim)."""
        parts = x.split(self.dims_in, dim=-1)
        return torch.stack(
            [to_feature(part) for part, to_feature in zip(parts, self.to_features, strict=True)],
            dim=-2,
        )


def mlp(dim_in: int, dim_out: int, *, dim_hidden: int, hidden_layers: int) -> nn.Sequential:
    """Linear layers with Tanh between them, `hidden_layers` of width `dim_hidden`."""
    widths = (dim_in, *(dim_hidden,) * hidden_layers, dim_out)
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        if index > 0:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per band, an MLP then a GLU from `dim` to that band's complex mask features."""

    def __init__(
        self, dim: int, dims_in: Sequence[int], *, dim_hidden: int, hidden_layers: int
    ) -> None:
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(
                mlp(dim, dim_in * 2, dim_hidden=dim_hidden, hidden_layers=hidden_layers),
                nn.GLU(dim=-1),
            )
            for dim_in in dims_in
        )

    def forward(self, x: Tensor) -> Tensor:
        """(batch, frames, bands, dim) -> (batch, frames, sum(dims_in))."""
        bands = x.unbind(dim=-2)
        return torch.cat(
            [to_freq(band) for band, to_freq in zip(bands, self.to_freqs, strict=True)], dim=-1
        )


class Spectrogram(nn.Module):
    """The STFT both RoFormers use, and its inverse, on (batch, channels, samples)."""

    def __init__(self, *, n_fft: int, hop_length: int, win_length: int, normalized: bool) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.normalized = normalized
        self.window: Tensor
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        """(batch, channels, samples) -> complex (batch, bins * channels, frames).

        Rows are frequency-major: row `bin * channels + channel`.
        """
        batch, channels, samples = audio.shape
        spectrum = torch.stft(
            audio.reshape(batch * channels, samples),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            normalized=self.normalized,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        bins, frames = spectrum.shape[-2:]
        spectrum = spectrum.view(batch, channels, bins, frames).transpose(1, 2)
        return spectrum.reshape(batch, bins * channels, frames)

    def inverse(self, spectrum: Tensor, *, channels: int, length: int | None) -> Tensor:
        """Complex (batch, stems, bins * channels, frames) -> (batch, stems, channels, samples).

        Bin 0 (DC) is zeroed first, as MSST's `zero_dc` does.
        """
        batch, stems, rows, frames = spectrum.shape
        spectrum = spectrum.view(batch, stems, rows // channels, channels, frames)
        spectrum = spectrum.transpose(2, 3).reshape(-1, rows // channels, frames)
        spectrum = spectrum.index_fill(1, torch.tensor([0], device=spectrum.device), 0.0)
        audio = torch.istft(
            spectrum,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            normalized=self.normalized,
            center=True,
            length=length,
        )
        return audio.view(batch, stems, channels, -1)


def spectrum_features(spectrum: Tensor) -> Tensor:
    """Complex (batch, rows, frames) -> real (batch, frames, rows * 2), re/im innermost."""
    return torch.view_as_real(spectrum).transpose(1, 2).flatten(-2)


def complex_masks(features: Tensor) -> Tensor:
    """Real (batch, stems, frames, rows * 2) -> complex (batch, stems, rows, frames)."""
    pairs = features.unflatten(-1, (-1, 2)).transpose(2, 3).contiguous()
    return torch.view_as_complex(pairs)
