"""`medtriad serve`: a FastAPI app searching an index by text, X-ray, ECG or any combination.

Endpoints (OpenAPI docs at ``/docs``):

* ``POST /search`` (multipart form): ``text``, ``cxr`` (PNG/JPEG/DICOM file), ``ecg`` (a zip of
  a WFDB record or a ``.npy``), ``ecg_fs`` (the ``.npy``'s rate), ``k``, ``explain``; returns
  the top-k studies with their scores and explanation maps (`medtriad.serve.maps`).
* ``GET /studies/{id}``, ``/studies/{id}/cxr.png``, ``/studies/{id}/ecg.png``: a study's metadata
  and pictures (`medtriad.serve.render`); ids are looked up in the metadata, never used as paths.
* ``GET /health``; ``GET /`` the web page (``static/``).

Safety: with a token, every endpoint but ``/health``, the page and the docs needs
``Authorization: Bearer <token>`` (`serve` refuses a non-loopback address without one). Request
bodies are capped while they stream in; uploads are checked on content (`medtriad.serve.uploads`).
Model work runs on one worker thread, and a request that takes longer than ``timeout_s`` gets a
504 (the work itself finishes in the background). Every error is JSON ``{"error": reason}``;
an unexpected one is logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medtriad.errors import ConfigError, DataError
from medtriad.serve.uploads import Limits, UploadProblem, decode_cxr_upload, decode_ecg_upload, mib

log = logging.getLogger(__name__)

__all__ = ["create_app", "serve"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
MAX_TEXT_CHARS = 10_000
MAX_K = 100


# --------------------------------------------------------------------------- guard middleware


def _json_message(status: int, reason: str) -> tuple[Message, Message]:
    body = json.dumps({"error": reason}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Caps the request body as it streams, bounds the request's time, and turns anything that
    escapes the app into a JSON error (the traceback goes to the log, never to the client)."""

    def __init__(self, app: ASGIApp, max_body: int, timeout_s: float) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "too_large": False, "received": 0}
        too_large = f"request body larger than {mib(self.max_body)}"

        async def reply(status: int, reason: str) -> None:
            if not state["started"]:
                state["started"] = True
                for message in _json_message(status, reason):
                    await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await reply(413, too_large)
            return

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    state["too_large"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["too_large"]:  # whatever the app made of the aborted body, answer 413
                await reply(413, too_large)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, limited_receive, guarded_send), self.timeout_s)
        except asyncio.TimeoutError:
            log.warning(
                "%s %s timed out after %.0f s",
                scope.get("method"),
                scope.get("path"),
                self.timeout_s,
            )
            await reply(504, f"request took longer than {self.timeout_s:g} s")
        except _BodyTooLarge:
            await reply(413, too_large)
        except Exception:
            if state["too_large"]:
                await reply(413, too_large)
                return
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            await reply(500, "internal error")


# --------------------------------------------------------------------------- the app


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _validation_reason(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_reason(exc))

    @app.exception_handler(UploadProblem)
    async def upload(_: Request, exc: UploadProblem) -> JSONResponse:
        return _error(exc.status, exc.reason)

    @app.exception_handler(DataError)
    async def data(_: Request, exc: DataError) -> JSONResponse:
        return _error(422, exc.reason)  # the reason only: paths are the server's business

    @app.exception_handler(ConfigError)
    async def query(_: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, exc.reason)


_BEARER = HTTPBearer(auto_error=False, description="The token given to `medtriad serve --token`.")


def _bearer(token: str | None) -> Callable[..., None]:
    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if token is None:
            return
        given = "" if credentials is None else credentials.credentials
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


async def _read_upload(field: str, upload: UploadFile | None, limit: int) -> bytes | None:
    """The bytes of an uploaded file (None when the field is empty), read with a size cap.
    The client's file name is never used."""
    if upload is None:
        return None
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise UploadProblem(413, f"{field}: larger than {mib(limit)}")
    return data or None


def create_app(
    index_dir: str | os.PathLike[str],
    *,
    token: str | None = None,
    max_upload_mb: float = 20.0,
    timeout_s: float = 60.0,
    limits: Limits | None = None,
    upload_dir: str | os.PathLike[str] | None = None,
    store: Any = None,
) -> FastAPI:
    """The FastAPI app over the index in `index_dir` (or an already open `store`).

    ``token``: bearer token required by the search and study endpoints (None: open).
    ``max_upload_mb``: cap on a request body. ``timeout_s``: cap on a request's time.
    ``upload_dir``: where temporary upload folders go (default: the system's).
    """
    from medtriad.index import IndexStore

    store = store if store is not None else IndexStore.open(index_dir)
    limits = limits or Limits()
    max_body = int(max_upload_mb * (1 << 20))
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtriad-model")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="medtriad search",
        version="1",
        description="Find the studies most like an X-ray, an ECG, a sentence, or a combination, and see why.",
        lifespan=lifespan,
    )
    app.state.store = store
    _install_handlers(app)
    app.add_middleware(GuardMiddleware, max_body=max_body, timeout_s=timeout_s)
    auth = Depends(_bearer(token))

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        """Run model or file work on the worker thread (cancellable from the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(worker, partial(fn, *args))

    def row_or_404(sample_id: str) -> int:
        row = store.row_of(sample_id)
        if row is None:
            raise HTTPException(404, "no study with this id in the index")
        return row

    @app.get("/health", summary="Liveness and what the index holds")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "studies": len(store),
            "modalities": store.modalities,
            "geometry": store.geometry,
            "model_loaded": store.model_loaded,
            "auth": token is not None,
        }

    @app.post(
        "/search", dependencies=[auth], summary="Top-k studies for a text, X-ray and/or ECG query"
    )
    async def search(
        text: Annotated[str | None, Form(description="Query text (report words).")] = None,
        cxr: Annotated[
            UploadFile | None, File(description="Chest X-ray: PNG, JPEG or DICOM.")
        ] = None,
        ecg: Annotated[
            UploadFile | None, File(description="ECG: zip of a WFDB record, or .npy (12, T) in mV.")
        ] = None,
        ecg_fs: Annotated[
            float, Form(ge=50, le=20_000, description="Sampling rate of a .npy ECG (Hz).")
        ] = 500.0,
        k: Annotated[int, Form(ge=1, le=MAX_K, description="Number of studies to return.")] = 10,
        explain: Annotated[bool, Form(description="Compute explanation maps.")] = True,
    ) -> dict[str, Any]:
        text = text.strip() if text and text.strip() else None
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise UploadProblem(413, f"text: longer than {MAX_TEXT_CHARS} characters")
        cxr_bytes = await _read_upload("cxr", cxr, max_body)
        ecg_bytes = await _read_upload("ecg", ecg, max_body)
        if text is None and cxr_bytes is None and ecg_bytes is None:
            raise HTTPException(400, "give at least one of text, cxr or ecg")
        return await run(
            _search, store, limits, upload_dir, text, cxr_bytes, ecg_bytes, ecg_fs, k, explain
        )

    @app.get("/studies/{sample_id}", dependencies=[auth], summary="A study's metadata and report")
    async def study(sample_id: str) -> dict[str, Any]:
        row = row_or_404(sample_id)
        out = store.study(row)
        base = f"/studies/{quote(out['sample_id'], safe='')}"
        out["cxr_url"] = f"{base}/cxr.png" if store.path(row, "cxr") else None
        out["ecg_url"] = f"{base}/ecg.png" if store.path(row, "ecg") else None
        return out

    @app.get(
        "/studies/{sample_id}/cxr.png",
        dependencies=[auth],
        response_class=Response,
        summary="The study's X-ray as the model sees it (square, 256 px)",
    )
    async def study_cxr(sample_id: str) -> Response:
        return _png_response(await run(_cxr_png, store, row_or_404(sample_id)))

    @app.get(
        "/studies/{sample_id}/ecg.png",
        dependencies=[auth],
        response_class=Response,
        summary="The study's 12-lead ECG as the model sees it",
    )
    async def study_ecg(sample_id: str) -> Response:
        return _png_response(await run(_ecg_png, store, row_or_404(sample_id)))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:  # a fixed list: the client's name never becomes a path
            raise HTTPException(404, "Not Found")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    return app


# --------------------------------------------------------------------------- work (worker thread)


def _search(
    store: Any,
    limits: Limits,
    upload_dir: Any,
    text: str | None,
    cxr: bytes | None,
    ecg: bytes | None,
    ecg_fs: float,
    k: int,
    explain: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    inputs: dict[str, Any] = {}
    if cxr is not None:
        inputs["cxr"] = decode_cxr_upload(store, cxr, limits)
    if ecg is not None:
        with tempfile.TemporaryDirectory(prefix="medtriad-upload-", dir=upload_dir) as folder:
            rec = decode_ecg_upload(store, ecg, ecg_fs, Path(folder), limits)
        inputs["ecg"], inputs["ecg_lead_mask"] = rec.signal, rec.lead_mask
    query = store.embed_query(text=text, **inputs)
    hits = store.search(query, k=k)
    maps: list[dict[str, Any]] = [{} for _ in hits]
    if explain and hits:
        from medtriad.serve.maps import explain_hits

        try:
            maps = explain_hits(store, query, hits)
        except Exception:  # a map is a bonus: never lose the results for it
            log.exception("explanation maps failed")
            maps = [{"error": "explanation unavailable"} for _ in hits]
    results = []
    for rank, (hit, expl) in enumerate(zip(hits, maps), start=1):
        info = store.study(hit.row)
        results.append(
            {
                "rank": rank,
                "sample_id": hit.sample_id,
                "score": round(hit.score, 6),
                "scores": {n: round(v, 6) for n, v in hit.scores.items()},
                "subject_id": info["subject_id"],
                "split": info["split"],
                "report_text": info["report_text"],
                "has": info["has"],
                "explanation": expl,
            }
        )
    return {
        "query": {"modalities": list(query), "text": text, "k": k, "geometry": store.geometry},
        "results": results,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _cxr_png(store: Any, row: int) -> bytes:
    from medtriad.data.cxr import read_cxr
    from medtriad.serve.render import THUMB, cxr_png

    path = store.path(row, "cxr")
    if path is None:
        raise HTTPException(404, "this study has no X-ray")
    try:
        return cxr_png(read_cxr(path, size=THUMB, fit=store.data_config.cxr.fit))
    except DataError as exc:
        log.warning("cannot render %s: %s", path, exc)
        raise HTTPException(404, "this study's X-ray file cannot be read") from exc


def _ecg_png(store: Any, row: int) -> bytes:
    from medtriad.serve.render import ecg_png

    path = store.path(row, "ecg")
    if path is None:
        raise HTTPException(404, "this study has no ECG")
    try:
        rec = store.read_ecg(path)
    except DataError as exc:
        log.warning("cannot render %s: %s", path, exc)
        raise HTTPException(404, "this study's ECG file cannot be read") from exc
    return ecg_png(rec.signal, rec.fs, rec.lead_mask)


# --------------------------------------------------------------------------- running


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _png_response(png: bytes) -> Response:
    """A rendered study image, cacheable by the browser only."""
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def serve(
    index_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    *,
    max_upload_mb: float = 20.0,
    timeout_s: float = 60.0,
) -> None:
    """Run the app with uvicorn. A non-loopback `host` without a `token` raises ConfigError."""
    import uvicorn

    token = token or None
    if not is_loopback(host) and not token:
        raise ConfigError(
            "token", f"binding to {host} exposes the index to the network: give a --token"
        )
    app = create_app(index_dir, token=token, max_upload_mb=max_upload_mb, timeout_s=timeout_s)
    log.info(
        "serving %s on http://%s:%d (auth %s)", index_dir, host, port, "on" if token else "off"
    )
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=5)
