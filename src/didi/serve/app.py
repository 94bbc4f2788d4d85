"""The ``didi serve`` application (Starlette) and its runner (uvicorn).

Routes: ``GET /`` the page (:mod:`.page`); ``GET /api/models`` the served models; ``POST /api/generate`` one answer
(:meth:`~.api.ServedModel.generate`); ``POST /api/stream`` the same as JSON lines, one ``{"type": "step"}`` line per
sampling step (the state with masked positions shown) then the answer (``{"type": "done"}``). A bad request gets
HTTP 400 (404 for an unknown model) and ``{"error": "one line"}``.

Requests are queued: one worker thread runs them one at a time, in order, each with its own seeded generator, so
concurrent requests give exactly what they would give one after the other, and latencies are not shared.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import DidiError
from .api import GenerateRequest, ServedModel
from .page import PAGE


class RequestError(Exception):
    """A request refused before anything ran: HTTP ``status`` and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(models: list[ServedModel]) -> Starlette:
    """The application serving ``models`` (the first is the default of a request without ``model``)."""
    by_name = {m.name: m for m in models}
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="didi-serve")

    async def parse(request: Request) -> tuple[ServedModel, GenerateRequest]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the request body is not JSON ({type(exc).__name__})") from None
        try:
            req = GenerateRequest.from_json(body)
        except DidiError as exc:
            raise RequestError(400, str(exc)) from None
        name = req.model or models[0].name
        if name not in by_name:
            raise RequestError(404, f"--model: no served model {name!r} (served: {', '.join(by_name)})")
        return by_name[name], req

    def run(model: ServedModel, req: GenerateRequest, emit: Any = None) -> dict[str, Any]:
        """The answer, or ``{"type": "error", "status", "error"}``: 400 for what the sampler refuses, 500 for a bug
        (its traceback goes to the server's log)."""
        try:
            return model.generate(req, emit)
        except DidiError as exc:
            return {"type": "error", "status": 400, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any other failure is answered, never left hanging
            traceback.print_exc()
            return {"type": "error", "status": 500, "error": f"internal error ({type(exc).__name__}: {exc})"}

    async def index(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"models": [m.describe() for m in models]})

    async def generate(request: Request) -> Response:
        try:
            model, req = await parse(request)
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        answer = await asyncio.get_running_loop().run_in_executor(worker, run, model, req)
        if answer["type"] == "error":
            return JSONResponse({"error": answer["error"]}, status_code=answer["status"])
        return JSONResponse(answer)

    async def stream(request: Request) -> Response:
        try:
            model, req = await parse(request)
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        loop.run_in_executor(worker, lambda: emit(run(model, req, emit)))
        first = await events.get()
        if first["type"] == "error":  # refused before the first step: an ordinary error answer
            return JSONResponse({"error": first["error"]}, status_code=first["status"])

        async def lines():
            event = first
            while True:
                yield json.dumps(event) + "\n"
                if event["type"] != "step":
                    return
                event = await events.get()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        worker.shutdown(wait=False, cancel_futures=True)  # queued requests are dropped when the server stops

    return Starlette(routes=[Route("/", index), Route("/api/models", list_models),
                             Route("/api/generate", generate, methods=["POST"]),
                             Route("/api/stream", stream, methods=["POST"])], lifespan=lifespan)


def serve(models: list[ServedModel], *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the application with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(models), host=host, port=port, log_level="info")
