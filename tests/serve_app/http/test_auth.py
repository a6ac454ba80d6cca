"""API keys: hashed, raw or Bearer, constant-time compared, one message for every failure."""

from __future__ import annotations

import pytest

from serve_app.http.auth import LOCAL_OWNER, Authenticator, AuthError
from serve_app.settings import ApiKey, AuthSettings, hash_key

KEYS = (ApiKey(name="alice", sha256=hash_key("a-secret")), ApiKey(name="bob", sha256=hash_key("b")))


def test_raw_and_bearer_keys_name_their_owner() -> None:
    auth = Authenticator(KEYS, enabled=True)
    assert auth.owner("a-secret") == "alice"
    assert auth.owner("Bearer a-secret") == "alice"
    assert auth.owner("bearer  b ") == "bob"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer ", "a-secre", "a-secret2", "Bearer b-x", "b a-secret"]
)
def test_every_failure_gives_the_same_error(header: str | None) -> None:
    auth = Authenticator(KEYS, enabled=True)
    with pytest.raises(AuthError) as caught:
        auth.owner(header)
    assert str(caught.value) == str(AuthError())


def test_off_means_one_local_owner_and_on_needs_keys() -> None:
    assert Authenticator((), enabled=False).owner(None) == LOCAL_OWNER
    with pytest.raises(ValueError, match="no API keys"):
        Authenticator((), enabled=True)


def test_keys_from_the_environment_are_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STEMSPLIT_KEYS", "carol:c-key, dave:d-key")
    keys = AuthSettings(enabled=True, keys=KEYS, keys_env="TEST_STEMSPLIT_KEYS").all_keys()
    assert [key.name for key in keys] == ["alice", "bob", "carol", "dave"]
    assert "c-key" not in repr(keys)
    assert Authenticator(keys, enabled=True).owner("d-key") == "dave"
    monkeypatch.setenv("TEST_STEMSPLIT_KEYS", "no-colon")
    with pytest.raises(ValueError, match="name:key"):
        AuthSettings(keys_env="TEST_STEMSPLIT_KEYS").all_keys()
