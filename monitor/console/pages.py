"""The console's pages (GET): alerts, an alert with its evidence, signals, model health, users, and the
evidence bundle as JSON. Each reads in one short transaction and renders; none writes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from monitor.console.app import Forbidden, Visitor, console_of, render, visitor
from monitor.console.chart import series_svg
from monitor.console.highlight import split_evidence
from monitor.console.series import alert_series
from monitor.storage import console as queries
from monitor.storage.reviews import list_users, review_history

router = APIRouter()
HEALTH_DAYS = 30


class BadQuery(ValueError):
    pass


def _day(text: str | None, *, end: bool = False) -> datetime | None:
    """A YYYY-MM-DD filter as a UTC instant: the day's start, or (``end``) the next day's start."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return None
    return datetime.combine(day + timedelta(days=1 if end else 0), time(), tzinfo=UTC)


def _cursor(text: str | None) -> queries.Cursor | None:
    """``ISO-time~id`` from a page link; an unreadable one starts from the first page."""
    if not text or "~" not in text:
        return None
    at, _, row_id = text.rpartition("~")
    try:
        parsed = datetime.fromisoformat(at)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), int(row_id))
    except ValueError:
        return None


def _cursor_text(cursor: queries.Cursor | None) -> str | None:
    return f"{cursor[0].isoformat()}~{cursor[1]}" if cursor else None


def signal_labels(tasks: list[str]) -> list[str]:
    """The signal labels of these tasks, from their definitions (a task the console cannot load adds none)."""
    from monitor.errors import MonitorError
    from monitor.tasks import load_task

    labels: set[str] = set()
    for task in tasks:
        try:
            labels.update(load_task(task).signal_labels)
        except MonitorError:
            continue
    return sorted(labels)


def _clean(value: str | None) -> str | None:
    return value.strip() or None if value else None


@router.get("/livez", include_in_schema=False)
def livez() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Review and sign-in counters for Prometheus (counts only, no personal data)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
def alerts_page(request: Request, who: Visitor = Depends(visitor), task: str | None = None,
                method: str | None = None, stratum: str | None = None, granularity: str | None = None,
                since: str | None = None, until: str | None = None, status: str | None = None,
                after: str | None = None) -> HTMLResponse:
    console = console_of(request)
    filters = queries.AlertFilter(task=_clean(task), method=_clean(method), stratum=_clean(stratum),
                                  granularity=_clean(granularity), since=_day(since), until=_day(until, end=True),
                                  status=_clean(status))
    with console.db() as session:
        alerts, more = queries.list_alerts(session, filters, limit=console.settings.page_size, cursor=_cursor(after))
        choices = queries.alert_choices(session)
    params = {k: v for k, v in dict(task=task, method=method, stratum=stratum, granularity=granularity, since=since,
                                    until=until, status=status).items() if v}
    return render(request, "alerts.html", {"alerts": alerts, "choices": choices, "params": params,
                                           "next": _cursor_text(more),
                                           "statuses": list(queries.ALERT_STATUS.values())}, who=who)


def _bundle(request: Request, alert_id: int) -> dict[str, Any] | None:
    console = console_of(request)
    with console.db() as session:
        alert = queries.get_alert(session, alert_id)
        if alert is None:
            return None
        ids = [int(p["post_id"]) for p in alert.top_posts if "post_id" in p]
        evidence = queries.post_evidence(session, alert.task, ids)
        points = alert_series(session, alert, console.signals, now=console.clock())
        history = review_history(session, alert_id=alert_id)
    posts = [evidence[i] for i in ids if i in evidence]
    return {"alert": alert, "posts": posts, "erased": len(ids) - len(posts), "points": points, "history": history}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        return {name: _jsonable(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(request: Request, alert_id: int, who: Visitor = Depends(visitor)) -> HTMLResponse:
    bundle = _bundle(request, alert_id)
    if bundle is None:
        return render(request, "error.html", {"message": f"There is no alert {alert_id}."}, status_code=404, who=who)
    alert = bundle["alert"]
    unit = "flagged posts" if alert.series == "count" else "summed probability"
    chart = Markup(series_svg(bundle["points"], highlight=alert.bucket_start,  # noqa: S704 - built escaped
                              title=f"{alert.task} {alert.stratum} {alert.series} per {alert.granularity} ({alert.method})",
                              unit=unit))
    posts = [(p, split_evidence(p.text, p.evidence), sorted(p.probabilities)) for p in bundle["posts"]]
    return render(request, "alert.html", {**bundle, "chart": chart, "posts": posts}, who=who)


@router.get("/alerts/{alert_id}/evidence.json")
def alert_evidence(request: Request, alert_id: int, who: Visitor = Depends(visitor)) -> Response:
    """The evidence bundle: the alert, its series with baseline and bound, its posts with the classifier's
    and the explainer's output and versions, and the review history."""
    bundle = _bundle(request, alert_id)
    if bundle is None:
        return JSONResponse({"error": f"no alert {alert_id}"}, status_code=404)
    body = _jsonable({**bundle, "alert": {**_jsonable(bundle["alert"]), "status": bundle["alert"].status},
                      "exported_at": console_of(request).clock(), "exported_by": who.user.username})
    return JSONResponse(body, headers={"Content-Disposition": f'attachment; filename="alert-{alert_id}.json"'})


@router.get("/signals", response_class=HTMLResponse)
def signals_page(request: Request, who: Visitor = Depends(visitor), task: str | None = None,
                 label: str | None = None, decided_by: str | None = None, since: str | None = None,
                 until: str | None = None, q: str | None = Query(None, max_length=200),
                 after: str | None = None) -> HTMLResponse:
    console = console_of(request)
    filters = queries.SignalFilter(task=_clean(task), label=_clean(label), decided_by=_clean(decided_by),
                                   since=_day(since), until=_day(until, end=True), text=_clean(q))
    with console.db() as session:
        page = queries.list_signals(session, filters, limit=console.settings.page_size, cursor=_cursor(after),
                                    scan=console.settings.search_scan_rows)
        tasks = queries.signal_tasks(session)
    choices = {"task": tasks, "label": signal_labels(tasks), "decided_by": ["classifier", "llm"]}
    params = {k: v for k, v in dict(task=task, label=label, decided_by=decided_by, since=since, until=until,
                                    q=q).items() if v}
    return render(request, "signals.html", {"rows": page.rows, "choices": choices, "params": params,
                                            "next": _cursor_text(page.next), "searched_to": page.searched_to,
                                            "scan": console.settings.search_scan_rows}, who=who)


@router.get("/posts/{post_id}", response_class=HTMLResponse)
def post_page(request: Request, post_id: int, task: str, who: Visitor = Depends(visitor)) -> HTMLResponse:
    console = console_of(request)
    with console.db() as session:
        found = queries.post_evidence(session, task, [post_id]).get(post_id)
        history = review_history(session, post_id=post_id, task=task)
    if found is None:
        return render(request, "error.html", {"message": "That post is not stored (it may have been erased)."},
                      status_code=404, who=who)
    return render(request, "post.html", {"post": found, "marked": split_evidence(found.text, found.evidence),
                                         "labels": sorted(found.probabilities), "history": history}, who=who)


@router.get("/health", response_class=HTMLResponse)
def health_page(request: Request, who: Visitor = Depends(visitor), days: int = Query(HEALTH_DAYS, ge=1, le=365)
                ) -> HTMLResponse:
    console = console_of(request)
    until = console.clock()
    since = until - timedelta(days=days)
    with console.db() as session:
        tasks = sorted(set(queries.prediction_tasks(session)) | set(console.expected_mix))
        health = [console.health.task_health(session, task, since=since, until=until, now=until) for task in tasks]
    rows = []
    for h in health:
        expected = console.expected_mix.get(h.task, {})
        expected_total = sum(expected.values())
        labels = sorted(set(h.label_counts) | set(expected))
        mix = [(label, h.label_counts.get(label, 0) / h.predictions if h.predictions else None,
                expected.get(label, 0) / expected_total if expected_total else None) for label in labels]
        rows.append((h, mix))
    return render(request, "health.html", {"rows": rows, "days": days}, who=who)


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, who: Visitor = Depends(visitor)) -> HTMLResponse:
    if who.user.role != "admin":
        raise Forbidden
    with console_of(request).db() as session:
        users = list_users(session)
    return render(request, "users.html", {"users": users}, who=who)
