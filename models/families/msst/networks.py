"""The network an MSST config describes, whichever of the four families it names.

MSST picks the class from the `model_type` it is given beside the YAML; this is that
dispatch for our implementations. Every network is built from the typed config view,
so a caller never needs to know which section a family reads: MDX23C reads `audio`,
`model` and the stem names, the RoFormers and SCNet only their `model` section.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.families.msst.bs_roformer import BSRoformer
from models.families.msst.config import MsstConfig, MsstConfigError
from models.families.msst.mdx23c import MDX23C
from models.families.msst.mel_band_roformer import MelBandRoformer
from models.families.msst.scnet import SCNet


def _mdx23c(config: MsstConfig) -> nn.Module:
    training = {
        "instruments": list(config.instruments),
        "target_instrument": config.target_instrument,
    }
    return MDX23C.from_msst({"audio": config.audio, "model": config.model, "training": training})


def _bs_roformer(config: MsstConfig) -> nn.Module:
    return BSRoformer.from_config(config.model)


def _mel_band_roformer(config: MsstConfig) -> nn.Module:
    return MelBandRoformer.from_config(config.model)


def _scnet(config: MsstConfig) -> nn.Module:
    network = SCNet.from_config(config.model)
    # SCNet reads its channel count from `model`, the chunked inference from `audio`.
    if network.audio_channels != config.channels:
        raise MsstConfigError(
            f"{config.source}: model.audio_channels is {network.audio_channels} but "
            f"audio.num_channels is {config.channels}"
        )
    return network


NETWORK_BUILDERS: dict[str, Callable[[MsstConfig], nn.Module]] = {
    "mdx23c": _mdx23c,
    "bs_roformer": _bs_roformer,
    "mel_band_roformer": _mel_band_roformer,
    "scnet": _scnet,
}


def build_network(config: MsstConfig) -> nn.Module:
    """The untrained network of `config`'s model type, in training mode as torch builds it.

    Build it under `torch.device("meta")` to check its keys without allocating weights.
    """
    builder = NETWORK_BUILDERS.get(config.model_type)
    if builder is None:
        known = ", ".join(NETWORK_BUILDERS)
        raise MsstConfigError(
            f"{config.source}: no network for MSST model type {config.model_type!r}; known: {known}"
        )
    try:
        return builder(config)
    except (KeyError, TypeError, ValueError) as exc:
        # MDX23C's config reader raises these for a missing or malformed value.
        raise MsstConfigError(
            f"{config.source}: cannot build a {config.model_type} network: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
