"""Listening and serving: bind the socket ourselves (a clear one-line error when the port is
taken), then hand it to uvicorn, in the foreground (`edgegen serve`) or on a thread (tests,
notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from edgegen.core.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on host {host!r} ({exc}); use an address of this machine, "
                          "e.g. --host 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "pick another --port (or --port 0 for any free one)") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app: Any, log_level: str) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            """End the running generation and refuse the queued ones first, so that open streams
            close at once (with an error event) instead of holding the shutdown."""
            service = getattr(getattr(app, "state", None), "service", None)
            if service is not None:
                service.worker.close()
            await super().shutdown(sockets)

    config = uvicorn.Config(app, log_level=log_level, ws="none", lifespan="on", timeout_graceful_shutdown=5)
    return Server(config)


def run(app: Any, sock: socket.socket, log_level: str = "info") -> None:
    """Serve until Ctrl-C (the running generation stops after its current token)."""
    _server(app, log_level).run(sockets=[sock])


class ThreadedServer:
    """Serve `app` from a background thread on a free loopback port:

        with ThreadedServer(create_app(model)) as url:
            ...  # requests to url
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self.url = ""

    def __enter__(self) -> str:
        sock = bind(self.host, self.port)
        self.url = url_of(sock)
        self.server = _server(self.app, self.log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="edgegen-server", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread stopped while starting; see its log")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
