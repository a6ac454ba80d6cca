"""Close the connection when a response leaves part of the request body unread.

A refusal (413 over the upload cap, 401, 429, 503...) is usually sent before the client
has finished sending its body. Kept alive, the connection would make the HTTP server read
and throw away everything the client still sends, a whole upload past the cap. With
`Connection: close` on such a response the server closes the connection once the
response is written, and the client stops sending.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


def declares_body(scope: Scope) -> bool:
    """Whether the request says a body follows (a length over zero, or chunked)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False


class CloseUnreadBody:
    """ASGI middleware: a response started before the body's last message was received
    carries `Connection: close`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not declares_body(scope):
            await self.app(scope, receive, send)
            return
        body_read = False

        async def tracking_receive() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_read:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        await self.app(scope, tracking_receive, closing_send)
