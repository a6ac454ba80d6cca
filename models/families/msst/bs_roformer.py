"""BS-RoFormer: the band-split RoFormer with fixed bands of STFT bins.

Built from the `model:` section of an MSST config (`model_type: bs_roformer`), it
loads MSST's published checkpoints strictly and maps (batch, channels, samples) to
(batch, stems, channels, samples), also when there is a single stem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.families.msst.roformer import (
    SHARED_ARGUMENTS,
    BandSplit,
    MaskEstimator,
    RMSNorm,
    RoformerConfigError,
    Spectrogram,
    axial_transformers,
    complex_masks,
    model_arguments,
    run_axial,
    spectrum_features,
)

_ARGUMENTS = SHARED_ARGUMENTS | {"freqs_per_bands"}


class BSRoformer(nn.Module):
    """The BS-RoFormer network with MSST's parameter names and defaults."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        freqs_per_bands: Sequence[int],
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        mask_estimator_depth: int = 2,
        mlp_expansion_factor: int = 4,
        zero_dc: bool = True,
    ) -> None:
        super().__init__()
        if not zero_dc:
            raise RoformerConfigError("bs_roformer: zero_dc=False is not supported")
        self.channels = 2 if stereo else 1
        self.num_stems = num_stems
        bins = stft_n_fft // 2 + 1
        if sum(freqs_per_bands) != bins:
            raise RoformerConfigError(
                f"bs_roformer: freqs_per_bands sum to {sum(freqs_per_bands)}, "
                f"not the {bins} bins of n_fft {stft_n_fft}"
            )
        self.layers = axial_transformers(
            dim,
            depth=depth,
            time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            heads=heads,
            dim_head=dim_head,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            norm_output=False,
        )
        self.final_norm = RMSNorm(dim)
        self.spectrogram = Spectrogram(
            n_fft=stft_n_fft,
            hop_length=stft_hop_length,
            win_length=stft_win_length,
            normalized=stft_normalized,
        )
        dims_in = [2 * count * self.channels for count in freqs_per_bands]
        self.band_split = BandSplit(dim, dims_in)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                dim,
                dims_in,
                dim_hidden=dim * mlp_expansion_factor,
                hidden_layers=mask_estimator_depth - 1,
            )
            for _ in range(num_stems)
        )

    @classmethod
    def from_config(cls, model: Mapping[str, Any]) -> BSRoformer:
        """The network an MSST config's `model:` section describes."""
        return cls(**model_arguments(model, _ARGUMENTS, family="bs_roformer"))

    def forward(self, audio: Tensor) -> Tensor:
        """(batch, channels, samples) -> (batch, stems, channels, samples)."""
        spectrum = self.spectrogram(audio)
        x = self.band_split(spectrum_features(spectrum))
        x = run_axial(self.layers, x)
        x = self.final_norm(x)
        masks = complex_masks(torch.stack([estimate(x) for estimate in self.mask_estimators], 1))
        return self.spectrogram.inverse(
            spectrum.unsqueeze(1) * masks, channels=self.channels, length=audio.shape[-1]
        )
