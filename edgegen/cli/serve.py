"""`edgegen serve`: an OpenAI-compatible local server with a browser chat page."""

from __future__ import annotations

from typing import Any

import click

from edgegen.cli._app import main
from edgegen.cli.generate import decoding_options, load_model, split_options
from edgegen.core.errors import ConfigError


@main.command()
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the server to your network.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--api-key", envvar="EDGEGEN_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on the API (also read from EDGEGEN_API_KEY).")
@click.option("--max-queue", default=16, show_default=True, type=click.IntRange(0, 10_000),
              help="Requests that may wait behind the running one; more get HTTP 429.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let pages from ORIGIN (e.g. http://localhost:3000, or *) call the API (repeatable).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also answer requests addressed to NAME (a name or address this machine is reached by; "
                   "repeatable; * for any). Loopback names are always answered; others get 403, which stops "
                   "DNS-rebinding pages.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@decoding_options
def serve(model: str | None, host: str, port: int, api_key: str | None, max_queue: int,
          cors_origins: tuple[str, ...], allowed_hosts: tuple[str, ...], log_level: str, **opts: Any) -> None:
    """Serve MODEL (default: the bundled tiny-chat) over an OpenAI-compatible HTTP API, with a chat
    page at /. The sampling options set each request's defaults; a request's own fields win."""
    defaults, flags = split_options(opts)
    try:
        from edgegen.server import LOOPBACK, bind, create_app, run, url_of
    except ImportError as exc:
        raise ConfigError(f"edgegen serve needs Starlette and uvicorn ({exc}); "
                          "install them with: pip install 'edgegen[serve]'") from None
    from edgegen.models import DEFAULT_MODEL

    sock = bind(host, port)  # before loading: a taken port fails fast
    llm = load_model(model, flags)
    llm.generate(llm.tokenizer.encode("hi") or [0], defaults, max_tokens=1)  # warm up; a bad --draft fails now
    llm.reset()
    hosts = accepted_hosts(host, allowed_hosts)
    app = create_app(llm, model_id=model or DEFAULT_MODEL, defaults=defaults, api_key=api_key,
                     max_queue=max_queue, cors_origins=cors_origins, allowed_hosts=hosts)
    url = url_of(sock).replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    if host not in LOOPBACK:
        click.echo(f"edgegen: warning: --host {host} lets anyone who can reach this machine use the model"
                   f"{'' if api_key else ' (add --api-key to require a key)'}", err=True)
        click.echo(f"edgegen: answering requests addressed to {', '.join(hosts_shown(hosts))}"
                   f"{'' if '*' in hosts else '; add --allowed-host NAME for each other name it is reached by'}",
                   err=True)
    click.echo(f"edgegen: serving {model or DEFAULT_MODEL} at {url}/v1 (chat page: {url}/); Ctrl-C stops",
               err=True)
    run(app, sock, log_level)


def accepted_hosts(host: str, allowed: tuple[str, ...]) -> list[str]:
    """The Host names served beyond loopback: those allowed, and the listening address itself
    when it is one address (not 0.0.0.0 or ::, which stand for every address)."""
    from edgegen.server import LOOPBACK

    own = [] if host in ("0.0.0.0", "::", "") or host in LOOPBACK else [host]
    return [*own, *allowed]


def hosts_shown(hosts: list[str]) -> list[str]:
    from edgegen.server import LOOPBACK

    names = [*LOOPBACK, *hosts]
    return ["any host" if h == "*" else f"[{h}]" if ":" in h else h for h in dict.fromkeys(names)]
