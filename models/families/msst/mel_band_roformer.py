"""Mel-Band RoFormer: the band-split RoFormer with overlapping mel-spaced bands.

Built from the `model:` section of an MSST config (`model_type:
mel_band_roformer`), it loads MSST's published checkpoints strictly. The bands are
the non-zero pattern of a Slaney mel filter bank (librosa's default), computed here
without librosa; bins shared by two bands get the mean of their masks. Like MSST,
it returns (batch, stems, channels, samples), squeezed to (batch, channels,
samples) when there is a single stem, and whole hops only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.families.msst.roformer import (
    SHARED_ARGUMENTS,
    BandSplit,
    MaskEstimator,
    RoformerConfigError,
    Spectrogram,
    axial_transformers,
    complex_masks,
    model_arguments,
    run_axial,
    spectrum_features,
)

_ARGUMENTS = SHARED_ARGUMENTS | {"num_bands", "sample_rate", "match_input_audio_length"}

# The Slaney mel scale: linear below 1 kHz, logarithmic above.
_HZ_PER_MEL = 200.0 / 3
_LOG_FROM_HZ = 1000.0
_LOG_FROM_MEL = _LOG_FROM_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz >= _LOG_FROM_HZ:
        return float(_LOG_FROM_MEL + np.log(hz / _LOG_FROM_HZ) / _LOG_STEP)
    return hz / _HZ_PER_MEL


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _HZ_PER_MEL * mels
    above = mels >= _LOG_FROM_MEL
    hz[above] = _LOG_FROM_HZ * np.exp(_LOG_STEP * (mels[above] - _LOG_FROM_MEL))
    return hz


def mel_bands(*, sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """Which STFT bins each band covers: a (bands, bins) boolean array.

    The pattern of `librosa.filters.mel(sr, n_fft, n_mels)` > 0 (fmin 0, fmax
    sr/2, Slaney scale; the Slaney norm only scales a filter, so it cannot change
    which weights are positive), with the first bin of the first band and the
    last bin of the last band forced in, as MelBandRoformer does.
    """
    centres = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), num_bands + 2))
    bins = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    widths = np.diff(centres)
    ramps = np.subtract.outer(centres, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    covered = weights > 0
    covered[0, 0] = True
    covered[-1, -1] = True
    return covered


class MelBandRoformer(nn.Module):
    """The Mel-Band RoFormer network with MSST's parameter names and defaults."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        num_bands: int = 60,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        sample_rate: int = 44100,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        mask_estimator_depth: int = 1,
        mlp_expansion_factor: int = 4,
        zero_dc: bool = True,
        match_input_audio_length: bool = False,
    ) -> None:
        super().__init__()
        if not zero_dc:
            raise RoformerConfigError("mel_band_roformer: zero_dc=False is not supported")
        self.channels = 2 if stereo else 1
        self.num_stems = num_stems
        self.match_input_audio_length = match_input_audio_length
        self.layers = axial_transformers(
            dim,
            depth=depth,
            time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            heads=heads,
            dim_head=dim_head,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            norm_output=True,
        )
        self.spectrogram = Spectrogram(
            n_fft=stft_n_fft,
            hop_length=stft_hop_length,
            win_length=stft_win_length,
            normalized=stft_normalized,
        )
        covered = mel_bands(sample_rate=sample_rate, n_fft=stft_n_fft, num_bands=num_bands)
        if not covered.any(axis=0).all():
            raise RoformerConfigError(
                f"mel_band_roformer: {num_bands} bands leave STFT bins of n_fft "
                f"{stft_n_fft} uncovered"
            )
        # Band b's bins in order, then band b+1's; each bin is its channels' rows.
        bins = np.nonzero(covered)[1]
        rows = (bins[:, None] * self.channels + np.arange(self.channels)).ravel()
        bands_per_row = covered.sum(axis=0).repeat(self.channels)[:, None]
        self.rows: Tensor
        self.bands_per_row: Tensor
        self.register_buffer("rows", torch.tensor(rows), persistent=False)
        self.register_buffer(
            "bands_per_row", torch.tensor(bands_per_row, dtype=torch.float32), persistent=False
        )
        dims_in = [2 * int(count) * self.channels for count in covered.sum(axis=1)]
        self.band_split = BandSplit(dim, dims_in)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                dim,
                dims_in,
                dim_hidden=dim * mlp_expansion_factor,
                hidden_layers=mask_estimator_depth,
            )
            for _ in range(num_stems)
        )

    @classmethod
    def from_config(cls, model: Mapping[str, Any]) -> MelBandRoformer:
        """The network an MSST config's `model:` section describes."""
        return cls(**model_arguments(model, _ARGUMENTS, family="mel_band_roformer"))

    def forward(self, audio: Tensor) -> Tensor:
        """(batch, channels, samples) -> (batch, stems, channels, whole hops).

        Squeezed to (batch, channels, whole hops) for a single stem.
        """
        spectrum = self.spectrogram(audio)
        x = self.band_split(spectrum_features(spectrum[:, self.rows]))
        x = run_axial(self.layers, x)
        masks = complex_masks(torch.stack([estimate(x) for estimate in self.mask_estimators], 1))
        # Bins in two bands get the mean of both bands' masks.
        summed = torch.zeros(
            (*masks.shape[:2], spectrum.shape[1], masks.shape[-1]),
            dtype=masks.dtype,
            device=masks.device,
        ).index_add_(2, self.rows, masks)
        mask = summed / self.bands_per_row.clamp(min=1e-8)
        length = audio.shape[-1] if self.match_input_audio_length else None
        stems = self.spectrogram.inverse(
            spectrum.unsqueeze(1) * mask, channels=self.channels, length=length
        )
        return stems.squeeze(1) if self.num_stems == 1 else stems
