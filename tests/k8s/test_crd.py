"""The CRD loader's rule for a missing CRD file: a failure under CI=true, a skip saying
where to get it elsewhere, and the file itself when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.crd import RAYSERVICE_CRD, require, validator


def test_a_missing_crd_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    missing = tmp_path / "ray.io_rayservices.yaml"
    with pytest.raises(pytest.fail.Exception, match=str(missing)):
        validator(missing, "v1")


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_a_missing_crd_skips_elsewhere_saying_where_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    missing = tmp_path / "ray.io_rayservices.yaml"
    with pytest.raises(pytest.skip.Exception) as skipped:
        validator(missing, "v1")
    assert str(missing) in str(skipped.value)
    assert "kuberay, tag v1.7.0" in str(skipped.value)


def test_a_present_crd_is_read_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require(RAYSERVICE_CRD) == RAYSERVICE_CRD
    assert validator(RAYSERVICE_CRD, "v1").schema["properties"]["kind"]
