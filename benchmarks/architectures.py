"""The published networks the benchmarks measure each model family on, with random weights.

Demucs runs `htdemucs_6s` (the shipped routing's); each MSST family runs a published
config: the one the community routing ships (configs/msst/) or, for SCNet, which no
routing serves yet, the published config its tests check. Random weights cost what the
trained ones cost; `small` keeps a network's outputs and shrinks the rest, for smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.common import model_folder
from models.engine.batching import SeparationModel
from models.families.demucs.family import DemucsModel
from models.families.demucs.loading import load_model
from models.families.msst.config import parse_config
from models.families.msst.family import MsstModel, geometry_of
from models.families.msst.testmodel import random_network, small_config

REPO = Path(__file__).resolve().parent.parent
MSST_CONFIGS = REPO / "configs" / "msst"
SCNET_CONFIGS = REPO / "tests" / "models" / "families" / "msst" / "fixtures" / "scnet" / "published"


@dataclass(frozen=True)
class Architecture:
    """The published network a family is measured on: a demucs bag or an MSST config."""

    family: str
    name: str
    config: Path | None = None
    any_chunk: bool = False  # the network takes chunks of any length

    def load(
        self,
        root: Path,
        *,
        small: bool,
        chunk_seconds: float | None = None,
        num_overlap: int | None = None,
        chunk_batch: int | None = None,
    ) -> SeparationModel:
        """The network with random weights; `small` keeps the outputs, shrinks the rest.
        MSST families tile with `num_overlap`, the fades of MSST's demix at batch size
        `chunk_batch` and, where `any_chunk`, chunks of `chunk_seconds` (None: the
        config's, each)."""
        if self.config is None:
            bag = load_model(self.name, model_dir=model_folder(root, self.name, small=small))
            return DemucsModel(bag)
        text = self.config.read_text("utf-8")
        if small:
            text = small_config(self.family, text, source=self.config.name)
        config = parse_config(text, model_type=self.family, source=self.config.name)
        network = random_network(config)
        if chunk_seconds is not None and self.any_chunk:
            # Whole STFT hops: a RoFormer gives back a chunk cut to them.
            hop = int(config.model.get("stft_hop_length", config.audio.get("hop_length", 512)))
            chunk = max(1, round(chunk_seconds * config.sample_rate / hop)) * hop
            config = replace(config, audio_chunk_size=chunk, inference_chunk_size=None)
        geometry = geometry_of(
            config,
            num_overlap=num_overlap or config.num_overlap,
            batch_size=chunk_batch or config.batch_size,
        )
        return MsstModel(network, config, geometry)


ARCHITECTURES = {
    architecture.family: architecture
    for architecture in (
        Architecture("demucs", "htdemucs_6s"),
        Architecture(
            "mdx23c",
            "DrumSep mdx23c",
            MSST_CONFIGS / "aufr33-jarredou_DrumSep_model_mdx23c_ep_141_sdr_10.8059.yaml",
        ),
        Architecture(
            "bs_roformer",
            "BS-RoFormer ep_317",
            MSST_CONFIGS / "model_bs_roformer_ep_317_sdr_12.9755.yaml",
            any_chunk=True,
        ),
        Architecture(
            "mel_band_roformer",
            "MelBand denoise",
            MSST_CONFIGS / "denoise_mel_band_roformer_aufr33_sdr_27.9959.yaml",
            any_chunk=True,
        ),
        Architecture(
            "scnet", "SCNet musdb18", SCNET_CONFIGS / "config_musdb18_scnet.yaml", any_chunk=True
        ),
    )
}
