"""The console's FastAPI application: settings and database in, pages out; who is signed in, CSRF, headers.

``create_app`` is the one place the console is assembled (``monitor console`` and the tests call it).
Every page needs a signed-in user: a page asked for without one redirects to the sign-in form, any
other request (a form post, the JSON export) is refused with 401. Reviews need the reviewer or admin
role (403 for a viewer). Every POST carries the session's CSRF token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.base import BaseHTTPMiddleware

from monitor.config import ConsoleSettings, Settings, SignalsSettings
from monitor.console import auth
from monitor.console.health import HealthCache
from monitor.errors import MonitorError
from monitor.storage.reviews import User, session_user
from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
from monitor.telemetry import CONSOLE_DENIED

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "monitor_console"
LOGIN_COOKIE = "monitor_console_login"

# Scripts and styles only from the console itself: a post's text can never run as code, even if
# escaping failed somewhere. Inline SVG needs nothing more.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class Console:
    """What every request handler needs, built once per application."""

    settings: ConsoleSettings
    signals: SignalsSettings
    key: bytes
    factory: sessionmaker[Session]
    templates: Jinja2Templates
    expected_mix: dict[str, dict[str, int]] = field(default_factory=dict)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    health: HealthCache = field(default_factory=lambda: HealthCache(0))

    def db(self) -> Iterator[Session]:
        return transaction(self.factory)  # type: ignore[return-value]


class NotSignedIn(Exception):
    """No valid session: a page redirects to the sign-in form, anything else gets 401."""


class Forbidden(Exception):
    """Signed in, but the role does not allow it (403)."""


class BadCsrf(Exception):
    """A POST without the session's CSRF token (403)."""


@dataclass(frozen=True)
class Visitor:
    """The signed-in user of a request, with the token their forms are bound to."""

    user: User
    token: str
    expires_at: datetime

    @property
    def can_review(self) -> bool:
        return self.user.role in auth.REVIEWERS


def console_of(request: Request) -> Console:
    return request.app.state.console


def visitor(request: Request) -> Visitor:
    """The signed-in user, or NotSignedIn (an expired, closed or unknown session, a disabled account)."""
    console = console_of(request)
    token = request.cookies.get(COOKIE)
    if not token:
        raise NotSignedIn
    with console.db() as session:
        found = session_user(session, auth.token_hash(console.key, token), now=console.clock())
    if found is None:
        raise NotSignedIn
    return Visitor(found[0], token, found[1])


def reviewer(request: Request) -> Visitor:
    who = visitor(request)
    if not who.can_review:
        raise Forbidden
    return who


def check_csrf(request: Request, who: Visitor, submitted: str | None) -> None:
    if not auth.csrf_ok(console_of(request).key, who.token, submitted):
        raise BadCsrf


def local_path(target: str | None, default: str = "/") -> str:
    """A redirect target only within the console (never ``//host`` or a scheme): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def render(request: Request, template: str, context: dict, *, status_code: int = 200,
           who: Visitor | None = None) -> HTMLResponse:
    console = console_of(request)
    extra = {"request": request, "who": who, "csrf": auth.csrf_token(console.key, who.token) if who else None}
    return console.templates.TemplateResponse(request, template, {**extra, **context}, status_code=status_code)


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):  # noqa: ANN001, ANN201 - Starlette's signature
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.autoescape = True  # every template, whatever its extension: a post's text is never markup
    env.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M") + " UTC" if t else ""
    env.filters["pct"] = lambda x: f"{100 * x:.1f}%" if x is not None else "–"
    return templates


def expected_label_mix(models: tuple[Path, ...]) -> dict[str, dict[str, int]]:
    """Per task, the label counts of each configured model's test split (its model card)."""
    from monitor.model_card import read_card

    mix: dict[str, dict[str, int]] = {}
    for folder in models:
        try:
            card = read_card(folder)
        except MonitorError as exc:
            log.warning("model health: no test split for %s: %s", folder, exc)
            continue
        counts = (card.data.get("label_counts") or {}).get("test") or {}
        mix[card.task] = {label: int(counts.get(label, 0)) for label in card.labels}
    return mix


def create_app(settings: Settings, *, factory: sessionmaker[Session] | None = None,
               clock: Callable[[], datetime] | None = None) -> FastAPI:
    """The console over ``settings.database`` (or ``factory``), ready for uvicorn."""
    from monitor.console import pages, actions

    if factory is None:
        factory = make_sessionmaker(create_db_engine(settings.database))
    console = Console(settings=settings.console, signals=settings.signals,
                      key=auth.load_secret_key(settings.console, settings.data_dir), factory=factory,
                      templates=_templates(), expected_mix=expected_label_mix(settings.classifier.models),
                      health=HealthCache(settings.console.health_cache_s))
    if clock is not None:
        console.clock = clock
    app = FastAPI(title="Health-signal monitor console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    app.add_middleware(_Headers)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(pages.router)
    app.include_router(actions.router)

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, _exc: NotSignedIn) -> Response:
        CONSOLE_DENIED.labels("unauthenticated").inc()
        if request.method == "GET" and not request.url.path.endswith(".json"):
            wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(wanted, safe='')}", status_code=303)
        return PlainTextResponse("sign in first", status_code=401)

    @app.exception_handler(Forbidden)
    async def _forbidden(_request: Request, _exc: Forbidden) -> Response:
        CONSOLE_DENIED.labels("forbidden").inc()
        return PlainTextResponse("your role may not do this (reviews need the reviewer or admin role)",
                                 status_code=403)

    @app.exception_handler(BadCsrf)
    async def _bad_csrf(_request: Request, _exc: BadCsrf) -> Response:
        CONSOLE_DENIED.labels("csrf").inc()
        return PlainTextResponse("the form's security token is missing or stale: reload the page and try again",
                                 status_code=403)

    return app
