"""`python -m models fetch` against a loopback HTTP server serving a random-weight MSST model:
verified downloads, checksum mismatches, interruption, reruns, licences, unknown names."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from models.checkpoints import ModelState, fetch_models
from models.cli import main
from models.families import family
from models.families.msst.testmodel import make_msst_test_model
from models.fetching import part_path
from models.stems.routing import load_routing
from tests.models.loopback import LoopbackServer, serving

TINY = Path(__file__).parent / "families" / "msst" / "fixtures" / "mdx23c" / "tiny.yaml"
WEIGHTS, CONFIG = "tiny_mdx23c.ckpt", "tiny_mdx23c.yaml"
MODEL = "vocals_mdx"


class Published(NamedTuple):
    """A model's files as its authors publish them, and their digests."""

    config: bytes
    weights: bytes

    @property
    def config_sha256(self) -> str:
        return hashlib.sha256(self.config).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.weights).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    written = make_msst_test_model(
        "mdx23c", TINY, tmp_path_factory.mktemp("published"), name="tiny_mdx23c"
    )
    return Published(written.config_file.read_bytes(), written.weights_file.read_bytes())


@pytest.fixture
def server(published: Published) -> Iterator[LoopbackServer]:
    with serving({f"ckpt/{CONFIG}": published.config, f"ckpt/{WEIGHTS}": published.weights}) as up:
        yield up


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def msst_entry(server: LoopbackServer, published: Published, **fields: Any) -> dict[str, Any]:
    """A routing entry for the served model, pinned by its whole weights digest and a
    prefix of its config's; `fields` override or, set to None, drop fields."""
    entry: dict[str, Any] = {
        "family": "mdx23c",
        "weights": WEIGHTS,
        "config": CONFIG,
        "sha256": published.sha256,
        "config_sha256": published.config_sha256[:12],
        "source": {
            "weights": server.url(f"ckpt/{WEIGHTS}"),
            "config": server.url(f"ckpt/{CONFIG}"),
        },
        "licence": "MIT",
        "quality": [{"stem": "vocals", "sdr": 10.25, "measured_on": "MUSDB18-HQ"}],
        "outputs": {"vocals": "vocals"},
    }
    entry.update(fields)
    return {key: value for key, value in entry.items() if value is not None}


def routing_file(folder: Path, models: dict[str, Any], **sections: Any) -> Path:
    path = folder / "routing.yaml"
    path.write_text(yaml.safe_dump({"models": models, **sections}), encoding="utf-8")
    return path


def fetch(routing: Path, model_dir: Path, *arguments: str) -> int:
    """Run `python -m models fetch` in-process; return its exit status."""
    command = ["fetch", "--routing", str(routing), "--model-dir", str(model_dir)]
    return main([*command, "--no-progress", *arguments])


def test_fetches_verifies_and_reports(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published)})
    assert fetch(routing, model_dir, MODEL) == 0
    assert (model_dir / CONFIG).read_bytes() == published.config
    assert (model_dir / WEIGHTS).read_bytes() == published.weights
    assert sorted(path.name for path in model_dir.iterdir()) == sorted([CONFIG, WEIGHTS])
    out = capsys.readouterr().out
    assert f"{MODEL}: mdx23c model, licence MIT" in out
    assert "quality: vocals 10.25 dB SDR on MUSDB18-HQ" in out
    assert f"sha256 verified ({published.sha256})" in out
    assert f"sha256 verified ({published.config_sha256[:12]})" in out
    # What was fetched is what the family loads.
    entry = load_routing(routing).models[MODEL]
    loaded = family("mdx23c").load(entry, model_dir=model_dir)
    assert loaded.geometry.sources == ("vocals", "drums", "other")


def test_checksum_mismatch_keeps_nothing(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "0123abcd" * 8
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published, sha256=wrong)})
    assert fetch(routing, model_dir, MODEL) == 1
    assert not (model_dir / WEIGHTS).exists() and not part_path(model_dir / WEIGHTS).exists()
    captured = capsys.readouterr()
    assert f"expected sha256 {wrong}, got {published.sha256}" in captured.out
    assert f"{MODEL} (failed)" in captured.err


def test_interrupted_download_resumes_on_rerun(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir.mkdir()
    (model_dir / CONFIG).write_bytes(published.config)  # so the first request is the weights
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published)})
    cut = len(published.weights) // 3
    server.behaviour.cut_after, server.behaviour.cuts_left = cut, 1
    assert fetch(routing, model_dir, MODEL) == 1
    assert "run again to resume" in capsys.readouterr().out
    assert not (model_dir / WEIGHTS).exists()
    assert part_path(model_dir / WEIGHTS).stat().st_size == cut

    assert fetch(routing, model_dir, MODEL) == 0
    assert (model_dir / WEIGHTS).read_bytes() == published.weights
    assert not part_path(model_dir / WEIGHTS).exists()
    assert [seen.range for seen in server.seen] == [None, f"bytes={cut}-"]
    assert "weights tiny_mdx23c.ckpt: resumed" in capsys.readouterr().out


def test_rerun_fetches_nothing(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published)})
    assert fetch(routing, model_dir, MODEL) == 0
    assert len(server.seen) == 2
    capsys.readouterr()
    assert fetch(routing, model_dir, MODEL) == 0
    assert len(server.seen) == 2
    assert capsys.readouterr().out.count("already there, sha256 verified") == 2


def test_a_damaged_file_is_fetched_again(
    server: LoopbackServer, published: Published, model_dir: Path, tmp_path: Path
) -> None:
    model_dir.mkdir()
    (model_dir / WEIGHTS).write_bytes(published.weights[:-1] + b"\0")
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published)})
    assert fetch(routing, model_dir, MODEL) == 0
    assert (model_dir / WEIGHTS).read_bytes() == published.weights


@pytest.mark.parametrize("licence", ["CC-BY-NC-4.0", None])
def test_licence_refused_until_accepted(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    licence: str | None,
) -> None:
    """A non-permissive licence, or none stated, is fetched only when named."""
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published, licence=licence)})
    named = licence or "unstated"
    assert fetch(routing, model_dir, MODEL) == 1
    assert server.seen == [] and not model_dir.exists()
    captured = capsys.readouterr()
    assert f"licence {named}" in captured.out
    assert f"accept it with --accept-licence {named}" in captured.out
    assert f"{MODEL} (refused)" in captured.err

    assert fetch(routing, model_dir, MODEL, "--accept-licence", "MIT") == 1
    assert server.seen == []
    assert fetch(routing, model_dir, MODEL, "--accept-licence", named) == 0
    assert (model_dir / WEIGHTS).read_bytes() == published.weights


def test_all_fetches_the_others_when_one_is_refused(
    server: LoopbackServer, published: Published, model_dir: Path, tmp_path: Path
) -> None:
    """--all includes preprocessing models; a refusal leaves the others to be fetched."""
    refused = msst_entry(server, published, licence="CC-BY-NC-4.0", outputs={"drums": "drums"})
    step = msst_entry(server, published, outputs=None, quality=None, output="vocals")
    routing = routing_file(tmp_path, {"drums_mdx": refused}, preprocessing={"Dereverb": step})
    lines: list[str] = []
    names = ["drums_mdx", "Dereverb"]
    results = fetch_models(
        load_routing(routing), names, model_dir, progress=False, log=lines.append
    )
    assert [(result.name, result.state) for result in results] == [
        ("drums_mdx", ModelState.REFUSED),
        ("Dereverb", ModelState.READY),
    ]
    assert [result.path for result in results[1].files] == [model_dir / CONFIG, model_dir / WEIGHTS]
    assert lines[:3] == [
        "drums_mdx: mdx23c model, licence CC-BY-NC-4.0",
        "  quality: vocals 10.25 dB SDR on MUSDB18-HQ",
        "  refused: licence 'CC-BY-NC-4.0' is not permissive, so nothing was fetched; "
        "accept it with --accept-licence CC-BY-NC-4.0",
    ]
    assert lines[3:5] == ["Dereverb: mdx23c model, licence MIT", "  quality: none published"]
    (model_dir / WEIGHTS).unlink()
    assert fetch(routing, model_dir, "--all") == 1
    assert (model_dir / WEIGHTS).read_bytes() == published.weights


def test_unknown_model_lists_the_known_ones(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published)})
    assert fetch(routing, model_dir, MODEL, "vocal_mdx") == 1
    assert f"unknown model(s) 'vocal_mdx'; the routing has: {MODEL}" in capsys.readouterr().err
    assert server.seen == []


def test_unpinned_files_are_fetched_and_their_digest_printed(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = msst_entry(server, published, sha256=None, config_sha256=None)
    routing = routing_file(tmp_path, {MODEL: entry})
    assert fetch(routing, model_dir, MODEL) == 0
    assert (model_dir / WEIGHTS).read_bytes() == published.weights
    out = capsys.readouterr().out
    assert f"pin it with sha256: '{published.sha256}'" in out
    assert f"pin it with config_sha256: '{published.config_sha256}'" in out


def test_a_missing_file_without_source_names_the_field(
    server: LoopbackServer,
    published: Published,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir.mkdir()
    (model_dir / CONFIG).write_bytes(published.config)
    source = {"config": server.url(f"ckpt/{CONFIG}")}
    routing = routing_file(tmp_path, {MODEL: msst_entry(server, published, source=source)})
    assert fetch(routing, model_dir, MODEL) == 1
    out = capsys.readouterr().out
    assert f"model '{MODEL}': weights file {model_dir / WEIGHTS} is missing" in out
    assert f"add 'source: {{weights: <url>}}' to model '{MODEL}'" in out
    assert server.seen == []


def test_demucs_hub_model_is_left_to_demucs(
    server: LoopbackServer, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = {
        "family": "demucs",
        "weights": "htdemucs",
        "licence": "MIT",
        "outputs": {"bass": "bass"},
    }
    routing = routing_file(tmp_path, {"htdemucs": entry})
    assert fetch(routing, model_dir, "htdemucs") == 0
    assert "demucs fetches htdemucs on first use" in capsys.readouterr().out
    assert server.seen == []


def test_demucs_weights_file_is_fetched_into_the_folder(
    server: LoopbackServer, published: Published, model_dir: Path, tmp_path: Path
) -> None:
    """A demucs entry naming one file, with a URL, is fetched like an MSST checkpoint
    (the bytes are not a demucs network: fetching does not parse them)."""
    server.files["demucs/mine.th"] = published.weights
    entry = {
        "family": "demucs",
        "weights": "mine.th",
        "sha256": published.sha256[:8],
        "source": {"weights": server.url("demucs/mine.th")},
        "licence": "Apache-2.0",
        "outputs": {"bass": "bass"},
    }
    routing = routing_file(tmp_path, {"mine": entry})
    assert fetch(routing, model_dir, "mine") == 0
    assert (model_dir / "mine.th").read_bytes() == published.weights
