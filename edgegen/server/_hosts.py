"""The Host check that stops DNS rebinding: a page on attacker.example whose name the attacker
re-points at 127.0.0.1 reaches this server from the user's own browser, same-origin, so CORS does
not stop it; its requests still say `Host: attacker.example`. Only requests that name a loopback
host (127.0.0.1, localhost, [::1], any port) or one the user allowed (`--allowed-host`) are
served; others get 403 in OpenAI's error shape. Starlette's TrustedHostMiddleware does the same
check but answers 400 in plain text, which OpenAI clients cannot read."""

from __future__ import annotations

import json
from typing import Any, Iterable

from edgegen.server._run import LOOPBACK


def host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case ('' when malformed)."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1] or [::1]:8080
        name, bracket, port = header[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return ""
        return name
    name, _, port = header.partition(":")
    return name if not port or port.isdigit() else ""


class AllowedHosts:
    """ASGI middleware: 403 unless the Host header names an allowed host ("*" allows any)."""

    def __init__(self, app: Any, hosts: Iterable[str] = ()):
        self.app = app
        self.hosts = {h.strip().lower().strip("[]") for h in (*LOOPBACK, *hosts)}

    def allows(self, header: str) -> bool:
        return "*" in self.hosts or host_name(header) in self.hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not self.allows(header):
                await _refuse(header, send)
                return
        await self.app(scope, receive, send)


async def _refuse(header: str, send: Any) -> None:
    shown = header[:80] or "(none)"
    body = json.dumps({"error": {
        "message": f"this server does not answer requests for host {shown!r}; start it with "
                   "`edgegen serve --allowed-host NAME` to allow that name",
        "type": "invalid_request_error", "param": None, "code": "host_not_allowed"}}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
