"""What runs inside Serve's HTTP proxy: connection limits and a bounded request body.

Serve starts its HTTP proxy (uvicorn, in the ProxyActor) before any application and
offers one way into that process: the environment variable
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names a function the proxy calls as it
starts, before its HTTP server. `install` is that function (`make run` and the test
service set the variable to `CALLBACK`). It reads the limits from `STEMSPLIT_PROXY_*`
environment variables (the environment is the only channel into the proxy; it is read
when the proxy starts, never on import), checks that Ray and uvicorn are the versions the
two replacements were written for, and installs them:

- `GuardedHttpToolsProtocol` (serve_app/http/connguard.py) as uvicorn's "auto" HTTP protocol,
  which Serve's server uses: header timeout and connection bounds;
- `BoundedMessageQueue` (serve_app/http/bodyqueue.py) as the proxy's per-request receive
  queue: the proxy holds a bounded part of a request body, not all of it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from serve_app.http.internals import check_versions, installed_versions

CALLBACK = "serve_app.http.proxyguard:install"
CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PREFIX = "STEMSPLIT_PROXY_"


class ProxySettings(BaseModel):
    """Limits of Serve's HTTP proxy, from `STEMSPLIT_PROXY_<NAME>` variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header_timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(4096, gt=0)
    max_connections_per_client: int = Field(64, ge=0)  # 0: no bound
    body_buffer_bytes: int = Field(64 * 1024, gt=0)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxySettings:
        """The settings named in `environ`; an unknown STEMSPLIT_PROXY_ name is an error."""
        values = {
            name.removeprefix(PREFIX).lower(): value
            for name, value in environ.items()
            if name.startswith(PREFIX)
        }
        return cls.model_validate(values)

    def environ(self) -> dict[str, str]:
        """The environment that gives a proxy these settings (and installs the guard)."""
        return {
            CALLBACK_VARIABLE: CALLBACK,
            **{PREFIX + name.upper(): str(value) for name, value in self.model_dump().items()},
        }


def install() -> list[object]:
    """Serve's proxy callback: install the guard in this process; no middlewares."""
    check_versions(installed_versions())
    settings = ProxySettings.from_environ(os.environ)
    # Imported only now: they import the internals whose versions were just checked.
    from ray.serve._private import http_util, proxy
    from uvicorn.protocols.http import auto, httptools_impl

    from serve_app.http.bodyqueue import bounded_queue
    from serve_app.http.connguard import ConnectionLimits, guarded_protocol

    if auto.AutoHTTPProtocol is not httptools_impl.HttpToolsProtocol:
        raise RuntimeError("uvicorn's auto HTTP protocol is not httptools: is httptools installed?")
    if proxy.MessageQueue is not http_util.MessageQueue:
        raise RuntimeError("Serve's proxy no longer uses http_util.MessageQueue")
    auto.AutoHTTPProtocol = guarded_protocol(
        ConnectionLimits(
            header_timeout_s=settings.header_timeout_s,
            max_connections=settings.max_connections,
            max_connections_per_client=settings.max_connections_per_client,
        )
    )
    proxy.MessageQueue = bounded_queue(settings.body_buffer_bytes)  # type: ignore[misc]
    return []
