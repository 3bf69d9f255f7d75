"""The ward station's web application (Starlette): the page, its push stream
(Server-Sent Events), the bed detail, sign-in and acknowledgement.

Routes::

    GET  /                     the page (static HTML/JS/CSS, no build step)
    GET  /static/...           its script and style
    GET  /events               Server-Sent Events: tiles (snapshot, then changes)
    GET  /api/me               who is signed in and how sign-in works here
    GET  /api/bed/{ward}/{bed} detail: delivery curves and alarm history
    POST /api/login            {"name", "password"} -> session cookie
    POST /api/logout
    POST /api/ack              {"ward", "bed", "alarm_code"} -> signed alarm.ack

State-changing requests need the `X-Station: 1` header (a page on another origin
cannot add it without a CORS pre-flight, which this app never grants) and a
signed-in nurse; the session cookie is HttpOnly, SameSite=Strict, and Secure
when the station serves TLS.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.station._auth import NAME_PATTERN, Sessions, UsersFile
from controller.station._ward import AckError, StationWard

__all__ = ["SECURITY_HEADERS", "StationAuth", "build_app"]

_STATIC = Path(__file__).with_name("static")
_COOKIE = "station_session"
_KEEPALIVE_S = 15.0


@dataclass(kw_only=True)
class StationAuth:
    """How nurses sign in here, and whether the page itself needs sign-in."""

    users: UsersFile | None
    proxy_header: str | None
    view_needs_sign_in: bool
    secure_cookie: bool
    sessions: Sessions

    @property
    def method(self) -> str:
        """`password`, `proxy` or `none` (nobody can sign in: acknowledgement off)."""
        if self.proxy_header:
            return "proxy"
        return "password" if self.users is not None else "none"

    def nurse(self, request: Request) -> str | None:
        """The signed-in nurse of a request, or None."""
        if self.proxy_header:
            raw = request.headers.get(self.proxy_header, "").strip()
            return raw if NAME_PATTERN.fullmatch(raw) else None
        return self.sessions.nurse(request.cookies.get(_COOKIE))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Handlers:
    """The request handlers of one station (one method per route)."""

    def __init__(self, ward: StationWard, auth: StationAuth, title: str) -> None:
        self.ward = ward
        self.auth = auth
        self.title = title

    def _guard_view(self, request: Request) -> Response | None:
        if self.auth.view_needs_sign_in and self.auth.nurse(request) is None:
            return _error(401, "sign in first")
        return None

    async def index(self, _request: Request) -> Response:
        return FileResponse(_STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def me(self, request: Request) -> Response:
        return JSONResponse(
            {
                "nurse": self.auth.nurse(request),
                "sign_in": self.auth.method,
                "view_needs_sign_in": self.auth.view_needs_sign_in,
                "can_acknowledge": self.ward.signer is not None,
                "sender": self.ward.sender_id,
                "title": self.title,
            }
        )

    async def events(self, request: Request) -> Response:
        denied = self._guard_view(request)
        if denied is not None:
            return denied
        ward = self.ward
        page = ward.open_page()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                while not ward.stopping.is_set():
                    try:
                        message = await asyncio.wait_for(page.queue.get(), timeout=_KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if not message:
                        break  # the station is shutting down
                    yield f"data: {message}\n\n"
            finally:
                ward.close_page(page)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def detail(self, request: Request) -> Response:
        denied = self._guard_view(request)
        if denied is not None:
            return denied
        found = self.ward.detail(request.path_params["ward"], request.path_params["bed"])
        if found is None:
            return _error(404, "no such bed")
        return JSONResponse(found)

    async def login(self, request: Request) -> Response:
        if request.headers.get("x-station") != "1":
            return _error(403, "missing X-Station header")
        users = self.auth.users
        if users is None:
            return _error(400, f"sign-in here is by {self.auth.method}, not by password")
        body = await _json(request)
        name, password = str(body.get("name", "")), str(body.get("password", ""))
        checked = await asyncio.to_thread(users.check, name, password)  # scrypt: ~50 ms
        if not checked:
            return _error(401, "unknown name or wrong password")
        response = JSONResponse({"nurse": name})
        response.set_cookie(
            _COOKIE,
            self.auth.sessions.open(name),
            httponly=True,
            samesite="strict",
            secure=self.auth.secure_cookie,
        )
        return response

    async def logout(self, request: Request) -> Response:
        self.auth.sessions.close(request.cookies.get(_COOKIE))
        response = JSONResponse({"nurse": None})
        response.delete_cookie(_COOKIE)
        return response

    async def acknowledge(self, request: Request) -> Response:
        if request.headers.get("x-station") != "1":
            return _error(403, "missing X-Station header (requests come from the page)")
        nurse = self.auth.nurse(request)
        if nurse is None:
            return _error(401, "sign in to acknowledge alarms")
        body = await _json(request)
        try:
            ack = self.ward.acknowledge(
                ward=str(body.get("ward", "")),
                bed=str(body.get("bed", "")),
                alarm_code=str(body.get("alarm_code", "")),
                nurse=nurse,
            )
        except AckError as exc:
            return _error(409, str(exc))
        return JSONResponse({"command_id": ack.command_id, "nurse": nurse, "status": ack.status})


#: Sent with every response: the page loads only its own script and style, cannot
#: be framed by another site, and leaks no address in a Referer.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
        b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class _SecurityHeaders:
    """Pure ASGI middleware adding `SECURITY_HEADERS` (streams pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], *SECURITY_HEADERS]}
            await send(message)

        await self._app(scope, receive, with_headers)


def build_app(ward: StationWard, auth: StationAuth, *, title: str) -> Starlette:
    """The ASGI application serving one station."""
    handlers = _Handlers(ward, auth, title)
    return Starlette(
        middleware=[Middleware(_SecurityHeaders)],
        routes=[
            Route("/", handlers.index),
            Route("/events", handlers.events),
            Route("/api/me", handlers.me),
            Route("/api/bed/{ward}/{bed}", handlers.detail),
            Route("/api/login", handlers.login, methods=["POST"]),
            Route("/api/logout", handlers.logout, methods=["POST"]),
            Route("/api/ack", handlers.acknowledge, methods=["POST"]),
            Mount("/static", StaticFiles(directory=_STATIC), name="static"),
        ],
    )


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
