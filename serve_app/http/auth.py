"""API keys: who is calling. Keys are configured as SHA-256 hashes and sent as
`Authorization: <key>` (as MusicGPT's clients do) or `Authorization: Bearer <key>`.

The presented key is hashed and compared with every configured hash in constant time,
so neither the comparison nor which key matched leaks through timing. A failure says
only that the key is missing or invalid, never which part was wrong.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from serve_app.settings import ApiKey, hash_key

LOCAL_OWNER = "local"  # the owner of every task when auth is off


class AuthError(Exception):
    """The request carries no valid API key."""

    def __init__(self) -> None:
        super().__init__("missing or invalid API key; send it as the Authorization header")


class Authenticator:
    """Maps an Authorization header to the name of the key that owns the request."""

    def __init__(self, keys: Sequence[ApiKey], *, enabled: bool) -> None:
        if enabled and not keys:
            raise ValueError("auth is enabled but no API keys are configured")
        self.enabled = enabled
        self.keys = tuple((key.name, bytes.fromhex(key.sha256)) for key in keys)

    def owner(self, header: str | None) -> str:
        """The key name for this header; raises AuthError when none matches."""
        if not self.enabled:
            return LOCAL_OWNER
        presented = (header or "").strip()
        if presented[:7].lower() == "bearer ":
            presented = presented[7:].strip()
        digest = bytes.fromhex(hash_key(presented))
        found: str | None = None
        for name, stored in self.keys:
            # Compare with every key, without stopping early, so timing says nothing.
            if hmac.compare_digest(digest, stored) and presented:
                found = name
        if found is None:
            raise AuthError()
        return found
