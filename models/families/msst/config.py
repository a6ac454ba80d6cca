"""Reading an MSST model config: the published YAML, safely, as a small typed view.

MSST (ZFTurbo's Music-Source-Separation-Training) publishes each checkpoint beside a
YAML config whose roformer sections hold `!!python/tuple` values, which `yaml.safe_load`
refuses and which MSST itself reads with PyYAML's FullLoader. We read them with a
SafeLoader that accepts that one tag as a real tuple and nothing else python-specific,
so a config can never construct objects or call functions.

The YAML does not say which network it describes (MSST takes that as `model_type` on
its command line), so the caller names it. The view keeps what the inference path
needs (rate, channels, chunk size, overlap, batch size, output names) and hands the
raw `model` and `audio` sections to the network builders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.errors import ModelLoadError

MODEL_TYPES = ("mdx23c", "bs_roformer", "mel_band_roformer", "scnet")
DEFAULT_SAMPLE_RATE = 44100
DEFAULT_CHANNELS = 2
MAX_CONFIG_BYTES = 1 << 20

PYTHON_TUPLE_TAG = "tag:yaml.org,2002:python/tuple"


class MsstConfigError(ModelLoadError):
    """An MSST config file that cannot be read, is not safe YAML, or lacks a needed value."""


class MsstYamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader plus `!!python/tuple`, the one python tag MSST configs use."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[Any, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"expected a sequence for {node.tag}", node.start_mark
        )
    return tuple(loader.construct_sequence(node))


MsstYamlLoader.add_constructor(PYTHON_TUPLE_TAG, _construct_tuple)


@dataclass(frozen=True)
class MsstConfig:
    """What one MSST config says about its network and its chunked inference."""

    model_type: str
    source: str  # the config's file name, for messages
    sample_rate: int
    channels: int
    audio_chunk_size: int
    inference_chunk_size: int | None
    num_overlap: int
    batch_size: int
    instruments: tuple[str, ...]
    target_instrument: str | None
    model: dict[str, Any]  # the raw `model` section, for the network builders
    audio: dict[str, Any]  # the raw `audio` section (MDX23C reads its STFT from it)

    @property
    def chunk_size(self) -> int:
        """The chunk MSST's demix cuts: `inference.chunk_size` when set, else the audio one."""
        return self.inference_chunk_size or self.audio_chunk_size

    @property
    def output_names(self) -> tuple[str, ...]:
        """The stems the network returns, in order (MSST's `prefer_target_instrument`)."""
        if self.target_instrument:
            return (self.target_instrument,)
        return self.instruments


def safe_load_yaml(text: str, *, source: str) -> Any:
    """Parse MSST YAML, accepting `!!python/tuple` and refusing every other python tag."""
    try:
        # MsstYamlLoader is a SafeLoader: nothing in the text can build objects or call code.
        return yaml.load(text, Loader=MsstYamlLoader)
    except yaml.YAMLError as exc:
        raise MsstConfigError(f"{source} is not a safe MSST config: {exc}") from exc


def read_config(
    path: str | Path, *, model_type: str, max_bytes: int = MAX_CONFIG_BYTES
) -> MsstConfig:
    """Read the MSST config at `path` as a config of a `model_type` network."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise MsstConfigError(f"{path.name} is {size} bytes, over the {max_bytes} limit")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MsstConfigError(f"cannot read MSST config {path.name}: {exc}") from exc
    return parse_config(text, model_type=model_type, source=path.name)


def parse_config(text: str, *, model_type: str, source: str = "<config>") -> MsstConfig:
    """The typed view of MSST config `text`; `source` names it in errors."""
    if model_type not in MODEL_TYPES:
        known = ", ".join(MODEL_TYPES)
        raise MsstConfigError(f"{source}: unknown MSST model type {model_type!r}; known: {known}")
    document = safe_load_yaml(text, source=source)
    if not isinstance(document, dict):
        raise MsstConfigError(f"{source}: an MSST config is a mapping of sections")
    audio = _section(document, "audio", source)
    training = _section(document, "training", source)
    inference = _section(document, "inference", source)
    model = _section(document, "model", source)
    instruments = training.get("instruments")
    if (
        not isinstance(instruments, list | tuple)
        or not instruments
        or not all(isinstance(name, str) and name for name in instruments)
    ):
        raise MsstConfigError(f"{source}: training.instruments must be a list of stem names")
    target = training.get("target_instrument")
    if target is not None and (not isinstance(target, str) or not target):
        raise MsstConfigError(f"{source}: training.target_instrument must be a stem name")
    return MsstConfig(
        model_type=model_type,
        source=source,
        sample_rate=_positive_int(audio, "audio", "sample_rate", source, DEFAULT_SAMPLE_RATE),
        channels=_positive_int(audio, "audio", "num_channels", source, DEFAULT_CHANNELS),
        audio_chunk_size=_positive_int(audio, "audio", "chunk_size", source),
        inference_chunk_size=(
            _positive_int(inference, "inference", "chunk_size", source)
            if inference.get("chunk_size") is not None
            else None
        ),
        num_overlap=_positive_int(inference, "inference", "num_overlap", source),
        batch_size=_positive_int(inference, "inference", "batch_size", source),
        instruments=tuple(instruments),
        target_instrument=target,
        model=model,
        audio=audio,
    )


def _section(document: dict[Any, Any], name: str, source: str) -> dict[str, Any]:
    section = document.get(name)
    if not isinstance(section, dict):
        raise MsstConfigError(f"{source}: the {name!r} section is missing or not a mapping")
    return section


def _positive_int(
    section: dict[str, Any], where: str, key: str, source: str, default: int | None = None
) -> int:
    value = section.get(key, default)
    # bool is an int subclass; `chunk_size: true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MsstConfigError(f"{source}: {where}.{key} must be a positive integer, not {value!r}")
    return value
