"""The HTTP side: an OpenAI-compatible API and the chat page, as one Starlette app.

    POST /v1/chat/completions, /v1/completions   JSON or server-sent events (`"stream": true`)
    GET  /v1/models, /v1/models/{id}, /health    what is loaded; liveness and queue length
    GET  /                                       the chat page (static files under /static)

Every error is OpenAI's JSON error body with a 4xx code (5xx only for a failing runtime), never
a traceback. Generations run one at a time on the worker (`_queue.Worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgegen.core import options as core_options
from edgegen.api.text import check_text_length
from edgegen.core.errors import ConfigError, ContextOverflow, EdgegenError
from edgegen.core.memory import out_of_memory_message
from edgegen.core.options import GenerateOptions
from edgegen.core.stats import GenerationStats
from edgegen.server._hosts import AllowedHosts
from edgegen.server._openai import ApiError, Request, Shaper, bad, parse_request
from edgegen.server._queue import Job, Worker

log = logging.getLogger("edgegen.server")
STATIC = Path(__file__).parent / "static"
MAX_BODY = 8 * 2**20
OPEN_PATHS = ("/health", "/", "/static/")  # no API key needed: liveness and the page's own files


class Service:
    """What the routes share: the model, its name, the request defaults and the worker."""

    def __init__(self, model: Any, model_id: str, defaults: GenerateOptions, max_queue: int, max_body: int):
        self.model, self.model_id, self.defaults, self.max_body = model, model_id, defaults, max_body
        self.context_length = int(model.manifest.context_length)
        self.worker = Worker(max_queue)
        own = _draft_of(defaults)
        self.drafts = set(getattr(core_options, "DRAFT_KINDS", ())) | ({own} if own else set())

    def check(self, request: Request) -> None:
        """What a request may not choose on its own: a draft model by name or path (that would let
        any client make the server load, convert or download models); the server's own draft
        (`edgegen serve --draft`), prompt-lookup and q4/q8 copies of the served model are fine."""
        draft = _draft_of(request.options)
        if draft is not None and draft not in self.drafts:
            raise bad(f"draft {draft!r} is not offered by this server; ask for one of "
                      f"{', '.join(sorted(self.drafts))}, or start it with `edgegen serve --draft MODEL`", "draft")

    def encode(self, request: Request) -> list[int]:
        """The prompt's token ids, rendered the same way every turn so the KV cache prefix is reused."""
        tokenizer = self.model.tokenizer
        param = "messages" if request.chat else "prompt"
        if request.chat:
            if not tokenizer.chat_template:
                raise bad("this model has no chat template; use /v1/completions with a plain prompt", param)
            try:
                ids = self.model.encode_chat(request.prompt, request.options)
            except ContextOverflow as exc:
                raise bad(str(exc), param, "context_length_exceeded") from None
            except ConfigError as exc:
                raise bad(str(exc), param) from None
        else:
            if isinstance(request.prompt, str):
                try:
                    check_text_length(len(request.prompt), self.context_length)
                except ContextOverflow as exc:
                    raise bad(str(exc), param, "context_length_exceeded") from None
            ids = tokenizer.encode(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
        if not ids:
            raise bad("the prompt is empty: give at least one token", param)
        if len(ids) >= self.context_length:
            raise bad(f"the prompt has {len(ids)} tokens but the model's context holds {self.context_length}; "
                      "shorten it", param, "context_length_exceeded")
        return ids

    def token_bytes(self, token: int) -> bytes:
        return self.model.tokenizer.piece(token)

    def model_card(self) -> dict[str, Any]:
        manifest = self.model.manifest
        return {"id": self.model_id, "object": "model", "created": 0, "owned_by": "edgegen",
                "runtime": manifest.runtime, "architecture": manifest.architecture,
                "quantization": manifest.quantization.method, "context_length": self.context_length}


def _draft_of(options: GenerateOptions) -> str | None:
    return getattr(getattr(options, "speculative", None), "draft", None)


def create_app(model: Any, *, model_id: str = "edgegen", defaults: GenerateOptions | None = None,
               api_key: str | None = None, max_queue: int = 16, max_body: int = MAX_BODY,
               cors_origins: Sequence[str] = (), allowed_hosts: Sequence[str] = ()) -> Starlette:
    """The server for one loaded `Model`. `defaults` are the options a request starts from (its
    own fields override them); `max_queue` requests may wait behind the running one (429 past
    that); bodies over `max_body` bytes get 413. Pages from `cors_origins` ("*": any) may call
    the API from a browser; by default only the server's own page can. Requests must name a
    loopback host or one of `allowed_hosts` ("*": any) in their Host header (403 otherwise: the
    defence against DNS rebinding)."""
    service = Service(model, model_id, defaults or GenerateOptions(), max_queue, max_body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(service.worker.stop)

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/models/{model_id:path}", model_info),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {HTTPException: http_error, Exception: internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.service = service
    if api_key:
        app.add_middleware(RequireKey, key=api_key)
    if cors_origins:  # outside the key check: a browser's preflight carries no key
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Edgegen-Warning"])
    app.add_middleware(AllowedHosts, hosts=allowed_hosts)  # outermost: a foreign Host gets nothing else
    return app


# ---------------------------------------------------------------------------- routes
async def index(request: HttpRequest) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: HttpRequest) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({"status": "ok", "model": service.model_id, **service.worker.load()})


async def models(request: HttpRequest) -> Response:
    return JSONResponse({"object": "list", "data": [request.app.state.service.model_card()]})


async def model_info(request: HttpRequest) -> Response:
    service: Service = request.app.state.service
    if request.path_params["model_id"] != service.model_id:
        return error(ApiError(404, f"no model {request.path_params['model_id']!r} here; this server runs "
                                   f"{service.model_id!r}", type="not_found_error", code="model_not_found"))
    return JSONResponse(service.model_card())


async def chat_completions(request: HttpRequest) -> Response:
    return await _generate(request, chat=True)


async def completions(request: HttpRequest) -> Response:
    return await _generate(request, chat=False)


async def _generate(http: HttpRequest, *, chat: bool) -> Response:
    service: Service = http.app.state.service
    try:
        request = parse_request(await read_json(http, service.max_body), chat=chat, defaults=service.defaults)
        service.check(request)
        ids = await run_in_threadpool(service.encode, request)
        job = _submit(service, request, ids)
    except ApiError as exc:
        return error(exc)
    except ClientDisconnect:  # left while sending its body
        return Response(status_code=499)
    shaper = Shaper(request, service.model_id, len(ids), service.token_bytes)
    headers = _warning(request.ignored)
    if request.stream:
        return EventStream(_events(job, shaper), headers={**headers, "Cache-Control": "no-cache"})
    try:
        text = await _collect(job, http)
    except ApiError as exc:
        return error(exc, headers)
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(shaper.response(text, job.stats), headers=headers)


def _submit(service: Service, request: Request, ids: list[int]) -> Job:
    """Check the request against the model and queue it (or 429)."""
    stats = GenerationStats()
    try:
        pieces = service.model.stream(ids, request.options, stats=stats)
    except EdgegenError as exc:
        raise bad(str(exc)) from None
    job = Job(pieces, stats, request.options.max_tokens)
    try:
        service.worker.submit(job)
    except ApiError:
        pieces.close()
        raise
    return job


def _warning(ignored: list[str]) -> dict[str, str]:
    if not ignored:
        return {}
    names = ", ".join(name.encode("unicode_escape").decode("ascii")[:40] for name in ignored[:20])  # no control bytes
    return {"X-Edgegen-Warning": f"ignored unsupported fields: {names}"}


# ---------------------------------------------------------------------------- bodies and streams
async def read_json(request: HttpRequest, limit: int) -> Any:
    """The body as JSON; 413 past `limit` bytes (checked before and while reading), 400 if not JSON.
    A body a browser may send across sites without asking (form or plain-text types) gets 415, so
    that no web page can make this server generate."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise ApiError(415, f"send the body as JSON with 'Content-Type: application/json' (got {kind!r})",
                       code="unsupported_media_type")
    too_big = ApiError(413, f"the request body is over the server's limit of {limit} bytes",
                       code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        raise bad(f"the request body is not valid JSON ({str(exc)[:200]})") from None


def sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


async def _events(job: Job, shaper: Shaper) -> AsyncIterator[bytes]:
    """OpenAI's chunk stream; a failure after the headers went out is sent as an error event."""
    try:
        if shaper.request.chat:
            yield sse(shaper.chunk(role=True))
        async for piece, given in job.events():
            yield sse(shaper.chunk(piece, tokens=shaper.fresh(job.stats, given)))
        calls = shaper.calls_chunk(job.stats)
        if calls is not None:
            yield sse(calls)
        yield sse(shaper.chunk(stats=job.stats, tokens=shaper.fresh(job.stats)))
        if shaper.request.include_usage:
            yield sse(shaper.usage_chunk(job.stats))
    except ApiError as exc:
        yield sse(exc.body())
    finally:
        job.cancel()  # a no-op once finished; stops the generation if the client left
    yield b"data: [DONE]\n\n"


class ClientGone(Exception):
    pass


async def _collect(job: Job, http: HttpRequest) -> str:
    """The whole text of a non-streaming request; cancels the job if the client leaves first."""
    pieces: list[str] = []

    async def gather() -> None:
        async for piece, _ in job.events():
            pieces.append(piece)

    gathering = asyncio.ensure_future(gather())
    leaving = asyncio.ensure_future(_disconnected(http.receive))
    try:
        await asyncio.wait({gathering, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not gathering.done():
            job.cancel()
            gathering.cancel()
    if not gathering.done() or gathering.cancelled():
        raise ClientGone
    gathering.result()  # raises the generation's ApiError, if any
    return "".join(pieces)


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events that stop (cancelling the generation) as soon as the client leaves,
    whatever ASGI version the server speaks."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with anyio.create_task_group() as group:
            async def stream() -> None:
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


# ---------------------------------------------------------------------------- errors and auth
def error(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def http_error(request: HttpRequest, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 400)
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    message = {404: f"no route {request.url.path}; see /v1/models, /v1/chat/completions, /v1/completions",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(getattr(exc, "detail", exc)))
    return error(ApiError(status, message, type=kind), getattr(exc, "headers", None))


async def internal_error(request: HttpRequest, exc: Exception) -> Response:
    if isinstance(exc, MemoryError):  # this request did not fit; the server goes on
        log.warning("a request to %s ran out of memory", request.url.path)
        return error(ApiError(503, out_of_memory_message("for this request"), type="server_error",
                              code="out_of_memory"))
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return error(ApiError(500, f"internal error ({type(exc).__name__}); see the server log", type="server_error"))


class RequireKey:
    """Bearer API key on every route but /health and the page's own files."""

    def __init__(self, app: Any, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in OPEN_PATHS[:2] and not path.startswith(OPEN_PATHS[2]):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                denied = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                  type="authentication_error", code="invalid_api_key")
                await error(denied, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
