"""The console's forms (POST): sign in, sign out, review a post's label, review an alert.

Every form carries a CSRF token; a review is appended (never an update), counted in Prometheus, and
the browser is sent back where it came from (POST/redirect/GET, so a reload does not post twice).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from monitor.console import auth
from monitor.console.app import COOKIE, LOGIN_COOKIE, Visitor, check_csrf, console_of, local_path, render, reviewer
from monitor.console.app import visitor as signed_in
from monitor.storage import console as queries
from monitor.storage.reviews import add_alert_review, add_label_review, close_session, find_user, open_session
from monitor.storage.tables import ALERT_DECISIONS
from monitor.telemetry import CONSOLE_REVIEWS, CONSOLE_SIGN_INS

log = logging.getLogger(__name__)
router = APIRouter()
_LOGIN_NONCE_S = 3600
_NOTE_CHARS = 2000


def _login_form(request: Request, *, next_path: str, error: str | None = None, status_code: int = 200) -> Response:
    """The sign-in form, bound to a fresh nonce cookie (the CSRF token of a form that has no session yet)."""
    console = console_of(request)
    nonce = auth.new_token()
    response = render(request, "login.html", {"next": next_path, "error": error,
                                              "login_csrf": auth.csrf_token(console.key, nonce)},
                      status_code=status_code)
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=_LOGIN_NONCE_S, httponly=True, samesite="lax",
                        secure=console.settings.cookie_secure, path="/login")
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:  # noqa: A002 - the query parameter's name
    return _login_form(request, next_path=local_path(next))


@router.post("/login")
def login(request: Request, username: str = Form(..., max_length=64), password: str = Form(..., max_length=1024),
          csrf_token: str = Form(""), next: str = Form("/")) -> Response:  # noqa: A002
    console = console_of(request)
    target = local_path(next)
    if not auth.csrf_ok(console.key, request.cookies.get(LOGIN_COOKIE), csrf_token):
        CONSOLE_SIGN_INS.labels("refused").inc()
        return _login_form(request, next_path=target, error="The form expired; please sign in again.",
                           status_code=403)
    with console.db() as session:
        user = find_user(session, username.strip())
        ok = auth.verify_password(user.password_hash if user else None, password) and user is not None and user.active
        if ok:
            token, now = auth.new_token(), console.clock()
            open_session(session, user.id, auth.token_hash(console.key, token), now=now,
                         expires_at=now + timedelta(seconds=console.settings.session_ttl_s))
    if not ok:
        CONSOLE_SIGN_INS.labels("refused").inc()
        log.info("console sign-in refused for %r", username[:64])
        return _login_form(request, next_path=target, error="Wrong username or password.", status_code=401)
    CONSOLE_SIGN_INS.labels("ok").inc()
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token, max_age=int(console.settings.session_ttl_s), httponly=True, samesite="lax",
                        secure=console.settings.cookie_secure, path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, who: Visitor = Depends(signed_in), csrf_token: str = Form("")) -> Response:
    check_csrf(request, who, csrf_token)
    console = console_of(request)
    with console.db() as session:
        close_session(session, auth.token_hash(console.key, who.token))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _note(text: str | None) -> str | None:
    return text.strip()[:_NOTE_CHARS] or None if text else None


@router.post("/posts/{post_id}/review")
def review_post(request: Request, post_id: int, who: Visitor = Depends(reviewer), task: str = Form(..., max_length=64),
                label: str = Form(..., max_length=64), csrf_token: str = Form(""), note: str | None = Form(None),
                next: str = Form("/")) -> Response:  # noqa: A002
    """Confirm the shown label (``label`` equal to it) or correct it to another of the task's labels."""
    check_csrf(request, who, csrf_token)
    console = console_of(request)
    with console.db() as session:
        known = queries.post_task_labels(session, post_id, task)
        if known is None:
            return render(request, "error.html", {"message": f"Post {post_id} has no prediction for {task}."},
                          status_code=404, who=who)
        labels, shown = known
        if label not in labels:
            return render(request, "error.html", {"message": f"{label!r} is not a label of {task}."},
                          status_code=422, who=who)
        add_label_review(session, post_id=post_id, task=task, label=label, shown_label=shown,
                         reviewer=who.user.username, note=_note(note), now=console.clock())
    CONSOLE_REVIEWS.labels(task, "label", "confirmed" if label == shown else "corrected").inc()
    return RedirectResponse(local_path(next, f"/posts/{post_id}?task={task}"), status_code=303)


@router.post("/alerts/{alert_id}/review")
def review_alert(request: Request, alert_id: int, who: Visitor = Depends(reviewer),
                 decision: str = Form(..., max_length=16), csrf_token: str = Form(""),
                 note: str | None = Form(None)) -> Response:
    """Mark an alert as a real event or a false alarm."""
    check_csrf(request, who, csrf_token)
    console = console_of(request)
    if decision not in ALERT_DECISIONS:
        return render(request, "error.html", {"message": f"{decision!r} is not event or false_alarm."},
                      status_code=422, who=who)
    with console.db() as session:
        try:
            stored = add_alert_review(session, alert_id=alert_id, decision=decision, reviewer=who.user.username,
                                      note=_note(note), now=console.clock())
        except LookupError:
            return render(request, "error.html", {"message": f"There is no alert {alert_id}."}, status_code=404,
                          who=who)
    CONSOLE_REVIEWS.labels(stored.task, "alert", decision).inc()
    return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
