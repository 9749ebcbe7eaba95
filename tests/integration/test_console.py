"""The analyst's console against a real database (SQLite and PostgreSQL), and in a real browser.

The routes run through Starlette's test client over a migrated, seeded database: sign-in, refusals,
CSRF, escaping, the evidence on an alert's page, reviews appended and counted, keyset pages, the
model-health page, and the export that `monitor train` reads. The browser test drives Debian's
Chromium with Playwright against the console served by uvicorn.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from monitor.cli import app as cli_app
from monitor.config import DatabaseSettings, Settings
from monitor.console.app import create_app
from monitor.console.auth import hash_password
from monitor.corpus import load_examples
from monitor.model_card import CARD_FILE, ModelCard
from monitor.storage import migrations
from monitor.storage.reviews import add_user
from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
from monitor.storage.tables import Alert, ConsoleUser, Explanation, Post, Prediction, Review, Signal
from monitor.tasks import load_task
from monitor.telemetry import CONSOLE_REVIEWS

TASK = "druglib_adverse"
PASSWORD = "correct horse battery"
NOW = datetime(2026, 3, 12, 9, 30, tzinfo=UTC)
BUCKET = datetime(2026, 3, 11, tzinfo=UTC)
EVIDENCE = "ended up in the emergency room twice"
EVIL = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"> rash all over"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> DatabaseSettings:
    if request.param == "sqlite":
        db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'console.db'}")
    else:
        db = request.getfixturevalue("postgres_db")
        migrations.downgrade(db, "base")  # the PostgreSQL database is shared by the session
    migrations.upgrade(db)
    return db


def seed(db: DatabaseSettings) -> dict[str, int]:
    """Ten days of a task's posts and signals, an explained spike on BUCKET with its alert, three users."""
    engine = create_db_engine(db)
    ids: dict[str, int] = {}
    try:
        with transaction(make_sessionmaker(engine)) as session:
            for name, role in (("viewer1", "viewer"), ("rev1", "reviewer"), ("admin1", "admin")):
                add_user(session, name, hash_password(PASSWORD), role)
            posts = []
            for day in range(10):
                count = 12 if day == 9 else 2  # the last day is the spike
                for k in range(count):
                    at = BUCKET - timedelta(days=9 - day) + timedelta(hours=1 + k)
                    text = f"day {day} post {k}: mild nausea, kept taking it"
                    if day == 9 and k == 0:
                        text = f"Took it for a week | {EVIDENCE} with hives | stopped it"
                    if day == 9 and k == 1:
                        text = EVIL
                    posts.append(Post(source="test", source_id=f"{day}-{k}", author=None, text=text, lang="en",
                                      created_at=at))
            session.add_all(posts)
            session.flush()
            for i, post in enumerate(posts):
                confidence = 0.9 - (i % 5) * 0.05
                session.add(Prediction(post_id=post.id, task=TASK, model_version="m-1", run="live",
                                       label="severe_adr",
                                       probabilities={"severe_adr": confidence, "no_severe_adr": 1 - confidence},
                                       confidence=confidence, escalated=i % 3 == 0, created_at=NOW - timedelta(days=1)))
                session.add(Signal(post_id=post.id, task=TASK, model_version="m-1", run="live", label="severe_adr",
                                   confidence=confidence, decided_by="llm" if i % 3 == 0 else "classifier",
                                   post_created_at=post.created_at))
            spike = [p for p in posts if p.created_at >= BUCKET]
            ids.update(evidence_post=spike[0].id, evil_post=spike[1].id, quiet_post=posts[0].id)
            session.add(Explanation(post_id=spike[0].id, task=TASK, model_version="m-1", run="live",
                                    llm_model="smollm2-135m", prompt_version="1", predicted_label="severe_adr",
                                    verdict="confirm", suggested_label=None, final_label="severe_adr",
                                    rationale="Two emergency visits are a severe reaction.", evidence=EVIDENCE,
                                    created_at=NOW - timedelta(days=1)))
            session.add(Explanation(post_id=spike[1].id, task=TASK, model_version="m-1", run="live",
                                    llm_model="smollm2-135m", prompt_version="1", predicted_label="severe_adr",
                                    verdict="reject", suggested_label="no_severe_adr", final_label="no_severe_adr",
                                    rationale="<b>bold</b> claim", evidence="rash all over",
                                    created_at=NOW - timedelta(days=1)))
            alert = Alert(task=TASK, granularity="day", stratum="all", series="count", method="C2",
                          bucket_start=BUCKET, bucket_end=BUCKET + timedelta(days=1), observed=12.0, expected=2.0,
                          sd=0.5, score=20.0, threshold=3.0, posts=12,
                          top_posts=[{"post_id": p.id, "label": "severe_adr"} for p in spike[:5]], detected_at=NOW)
            session.add(alert)
            session.flush()
            ids["alert"] = alert.id
    finally:
        engine.dispose()
    return ids


def settings_for(db: DatabaseSettings, tmp_path: Path, **console) -> Settings:
    return Settings(_env_file=None, database=db, data_dir=tmp_path / "data", console={"page_size": 5, **console})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def client_for(db: DatabaseSettings, tmp_path: Path, clock: Clock | None = None, *, scheme: str = "http",
               **console) -> TestClient:
    return TestClient(create_app(settings_for(db, tmp_path, **console), clock=clock or Clock()),
                      base_url=f"{scheme}://127.0.0.1", follow_redirects=False)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)[1]


def sign_in(client: TestClient, username: str, password: str = PASSWORD):
    form = client.get("/login")
    return client.post("/login", data={"username": username, "password": password, "csrf_token": _csrf(form.text),
                                       "next": "/"})


def rows(db: DatabaseSettings, table) -> list:  # noqa: ANN001
    engine = create_db_engine(db)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            return list(session.scalars(select(table).order_by(table.id)))
    finally:
        engine.dispose()


# -- access ----------------------------------------------------------------------------------------------

def test_nothing_is_shown_or_stored_without_signing_in(database, tmp_path):
    ids = seed(database)
    client = client_for(database, tmp_path)
    for page in ("/", f"/alerts/{ids['alert']}", "/signals?task=x", "/health", "/users"):
        response = client.get(page)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next="), page
    assert client.get(f"/alerts/{ids['alert']}/evidence.json").status_code == 401
    assert client.post(f"/posts/{ids['evidence_post']}/review", data={"task": TASK, "label": "severe_adr"}
                       ).status_code == 401
    assert client.post(f"/alerts/{ids['alert']}/review", data={"decision": "event"}).status_code == 401
    assert rows(database, Review) == []
    # The way back after signing in stays on the console.
    assert client.get("/login?next=//evil.example/x").text.count('value="/"') == 1


def test_sign_in_checks_the_password_the_form_token_and_sets_a_locked_down_cookie(database, tmp_path):
    seed(database)
    client = client_for(database, tmp_path)
    assert sign_in(client, "rev1", "wrong password!").status_code == 401
    assert sign_in(client, "nobody", PASSWORD).status_code == 401
    client.get("/login")
    assert client.post("/login", data={"username": "rev1", "password": PASSWORD, "csrf_token": "0" * 64}
                       ).status_code == 403
    done = sign_in(client, "rev1")
    assert done.status_code == 303 and done.headers["location"] == "/"
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("monitor_console="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # bound to 127.0.0.1
    assert client.get("/").status_code == 200
    stored = rows(database, ConsoleUser)
    assert all(u.password_hash.startswith("$argon2") and PASSWORD not in u.password_hash for u in stored)

    secure = client_for(database, tmp_path, host="0.0.0.0", scheme="https")  # bound beyond the loopback
    cookie = next(c for c in sign_in(secure, "rev1").headers.get_list("set-cookie") if c.startswith("monitor_console="))
    assert "Secure" in cookie


def test_sessions_expire_and_end_at_sign_out(database, tmp_path):
    seed(database)
    clock = Clock()
    client = client_for(database, tmp_path, clock=clock, session_ttl_s=600)
    sign_in(client, "viewer1")
    clock.now = NOW + timedelta(seconds=599)
    assert client.get("/").status_code == 200
    clock.now = NOW + timedelta(seconds=601)
    assert client.get("/").status_code == 303

    clock.now = NOW
    sign_in(client, "viewer1")
    page = client.get("/")
    token = client.cookies.get("monitor_console")
    assert client.post("/logout", data={"csrf_token": _csrf(page.text)}).status_code == 303
    client.cookies.set("monitor_console", token)  # a copied cookie is worth nothing after sign-out
    assert client.get("/").status_code == 303


# -- pages -----------------------------------------------------------------------------------------------

def test_alerts_are_listed_newest_first_and_filtered(database, tmp_path):
    ids = seed(database)
    client = client_for(database, tmp_path)
    sign_in(client, "viewer1")
    page = client.get("/").text
    assert f'href="/alerts/{ids["alert"]}"' in page and "C2" in page and "new" in page
    assert f"/alerts/{ids['alert']}" not in client.get("/?task=other_task").text
    assert f"/alerts/{ids['alert']}" in client.get("/?method=C2&granularity=day&stratum=all&since=2026-03-11").text
    assert f"/alerts/{ids['alert']}" not in client.get("/?since=2026-03-12").text
    assert f"/alerts/{ids['alert']}" not in client.get("/?status=dismissed").text


def test_an_alert_page_shows_the_evidence_marked_and_a_posts_markup_as_text(database, tmp_path):
    ids = seed(database)
    client = client_for(database, tmp_path)
    sign_in(client, "viewer1")
    response = client.get(f"/alerts/{ids['alert']}")
    page = response.text
    assert response.status_code == 200
    assert f'<mark class="evidence">{EVIDENCE}</mark>' in page
    assert "<script>document.title" not in page and "<img src=x" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;document.title" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert '<svg class="chart"' in page and 'class="band"' in page and 'class="point alert current"' in page
    assert "smollm2-135m" in page and "m-1" in page and "p = 0.750 (calibrated)" in page
    assert "Confirm severe_adr" not in page  # a viewer sees no review form


def test_the_evidence_bundle_exports_as_json(database, tmp_path):
    ids = seed(database)
    client = client_for(database, tmp_path)
    sign_in(client, "viewer1")
    bundle = client.get(f"/alerts/{ids['alert']}/evidence.json").json()
    assert bundle["alert"]["observed"] == 12.0 and bundle["alert"]["status"] == "new"
    first = next(p for p in bundle["posts"] if p["post_id"] == ids["evidence_post"])
    assert first["evidence"] == EVIDENCE and first["llm_model"] == "smollm2-135m" and first["prompt_version"] == "1"
    assert first["model_version"] == "m-1" and first["probabilities"]["severe_adr"] == pytest.approx(0.75)
    bucket = next(p for p in bundle["points"] if p["start"] == BUCKET.isoformat())
    assert bucket["observed"] == 12.0 and bucket["alert"] is True and bucket["upper"] < 12.0
    assert bundle["exported_by"] == "viewer1"


def test_signals_page_through_keyset_pages_and_search(database, tmp_path):
    ids = seed(database)
    client = client_for(database, tmp_path)
    sign_in(client, "viewer1")
    seen: list[str] = []
    url = f"/signals?task={TASK}&decided_by=classifier"
    while url:
        page = client.get(url).text
        seen += re.findall(r'href="/posts/(\d+)\?task=', page)
        found = re.search(r'rel="next" href="(\?[^"]+)"', page)
        url = "/signals" + found[1].replace("&amp;", "&") if found else None
    classifier_posts = 30 - 10  # every third of the 30 posts was decided by the LLM
    assert len(seen) == len(set(seen)) == classifier_posts
    assert [int(s) for s in seen] == sorted((int(s) for s in seen), reverse=True)  # newest post first
    page = client.get("/signals?q=EMERGENCY+room").text
    assert re.findall(r'href="/posts/(\d+)\?task=', page) == [str(ids["evidence_post"])]
    assert "&lt;script&gt;" in client.get("/signals?q=onerror").text
    assert "No signals match" in client.get("/signals?since=2027-01-01").text
    assert "No signals match" in client.get("/signals?q=100%25").text  # a % is a character, not a wildcard


def test_model_health_compares_the_label_mix_with_the_test_split(database, tmp_path):
    seed(database)
    task = load_task(TASK)
    folder = tmp_path / "model"
    folder.mkdir()
    card = ModelCard(model_version="m-1", task=TASK, labels=list(task.labels), signal_labels=list(task.signal_labels),
                     metric=task.metric, base_model="none", max_length=64, created_at=NOW,
                     data={"label_counts": {"test": {"no_severe_adr": 80, "severe_adr": 20}}})
    (folder / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json")))
    settings = settings_for(database, tmp_path).model_copy(update={"classifier": Settings(
        _env_file=None, classifier={"models": [str(folder)]}).classifier})
    client = TestClient(create_app(settings, clock=Clock()), base_url="http://127.0.0.1", follow_redirects=False)
    sign_in(client, "viewer1")
    page = client.get("/health").text
    assert "30 live predictions" in page and "Escalated 10 (33.3%)" in page
    assert "flipped 1 (50.0% of explained)" in page
    assert re.search(r"severe_adr</td><td class=\"num\">100.0%</td><td class=\"num\">20.0%", page)
    assert "2026-03-11" in page


# -- reviews ---------------------------------------------------------------------------------------------

def test_reviews_need_the_reviewer_role_and_the_form_token_and_are_appended(database, tmp_path):
    ids = seed(database)
    post, alert = ids["evidence_post"], ids["alert"]
    viewer = client_for(database, tmp_path)
    page = sign_in(viewer, "viewer1") and viewer.get(f"/alerts/{alert}").text
    assert viewer.post(f"/posts/{post}/review", data={"task": TASK, "label": "severe_adr",
                                                      "csrf_token": _csrf(page)}).status_code == 403
    assert viewer.post(f"/alerts/{alert}/review", data={"decision": "event", "csrf_token": _csrf(page)}
                       ).status_code == 403

    client = client_for(database, tmp_path)
    sign_in(client, "rev1")
    page = client.get(f"/alerts/{alert}").text
    assert "Confirm severe_adr" in page and "Correct to no_severe_adr" in page
    assert client.post(f"/posts/{post}/review", data={"task": TASK, "label": "severe_adr"}).status_code == 403
    assert client.post(f"/posts/{post}/review", data={"task": TASK, "label": "severe_adr",
                                                      "csrf_token": _csrf(page.replace(_csrf(page), "0" * 64))}
                       ).status_code == 403
    assert rows(database, Review) == []

    before = CONSOLE_REVIEWS.labels(TASK, "label", "confirmed")._value.get()  # noqa: SLF001
    done = client.post(f"/posts/{post}/review", data={"task": TASK, "label": "severe_adr", "csrf_token": _csrf(page),
                                                      "next": f"/alerts/{alert}#post-{post}"})
    assert done.status_code == 303 and done.headers["location"] == f"/alerts/{alert}#post-{post}"
    assert CONSOLE_REVIEWS.labels(TASK, "label", "confirmed")._value.get() == before + 1  # noqa: SLF001
    client.post(f"/posts/{post}/review", data={"task": TASK, "label": "no_severe_adr", "csrf_token": _csrf(page)})
    assert client.post(f"/posts/{post}/review", data={"task": TASK, "label": "bogus", "csrf_token": _csrf(page)}
                       ).status_code == 422
    stored = rows(database, Review)
    assert [(r.kind, r.post_id, r.label, r.shown_label, r.reviewer) for r in stored] == [
        ("label", post, "severe_adr", "severe_adr", "rev1"), ("label", post, "no_severe_adr", "severe_adr", "rev1")]
    page = client.get(f"/posts/{post}?task={TASK}").text
    assert "corrected from severe_adr" in page and page.count("rev1 said") == 2

    client.post(f"/alerts/{alert}/review", data={"decision": "event", "note": "<i>cluster</i>",
                                                 "csrf_token": _csrf(page)})
    assert "confirmed event" in client.get("/").text
    client.post(f"/alerts/{alert}/review", data={"decision": "false_alarm", "csrf_token": _csrf(page)})
    assert f"/alerts/{alert}" in client.get("/?status=dismissed").text
    assert f"/alerts/{alert}" not in client.get("/?status=confirmed+event").text
    page = client.get(f"/alerts/{alert}").text
    assert "&lt;i&gt;cluster&lt;/i&gt;" in page and page.index("false alarm") < page.index("marked it event")
    assert [r.decision for r in rows(database, Review) if r.kind == "alert"] == ["event", "false_alarm"]


def test_reviewed_labels_export_to_a_file_monitor_train_reads(database, tmp_path, monkeypatch):
    ids = seed(database)
    client = client_for(database, tmp_path)
    sign_in(client, "rev1")
    csrf = _csrf(client.get("/").text)
    for post, label in ((ids["evidence_post"], "no_severe_adr"), (ids["evidence_post"], "severe_adr"),
                        (ids["evil_post"], "no_severe_adr"), (ids["quiet_post"], "severe_adr")):
        client.post(f"/posts/{post}/review", data={"task": TASK, "label": label, "csrf_token": csrf})
    monkeypatch.setenv("MONITOR_DATABASE__URL", database.url)
    monkeypatch.setenv("MONITOR_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "reviewed.tsv"
    result = CliRunner().invoke(cli_app, ["reviews", "export", TASK, "--out", str(out)])
    assert result.exit_code == 0, result.output
    examples = {e.id: e for e in load_examples(out, load_task(TASK)).examples}
    assert {k: e.label for k, e in examples.items()} == {"test:9-0": "severe_adr", "test:9-1": "no_severe_adr",
                                                         "test:0-0": "severe_adr"}  # the latest review wins
    assert EVIDENCE in examples["test:9-0"].text and "<script>" in examples["test:9-1"].text

    empty = CliRunner().invoke(cli_app, ["reviews", "export", "druglib_sentiment", "--out", str(tmp_path / "e.tsv")])
    assert empty.exit_code != 0 and not (tmp_path / "e.tsv").exists()


def test_add_user_stores_a_hash_and_refuses_a_second_account_of_the_same_name(database, tmp_path, monkeypatch):
    monkeypatch.setenv("MONITOR_DATABASE__URL", database.url)
    monkeypatch.setenv("MONITOR_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    args = ["console", "add-user", "ana", "--role", "reviewer", "--password", PASSWORD]
    assert runner.invoke(cli_app, args).exit_code == 0
    again = runner.invoke(cli_app, args)
    assert again.exit_code != 0 and "exists" in str(again.exception)
    assert runner.invoke(cli_app, [*args[:5], "admin", "--password", "short"]).exit_code != 0
    assert runner.invoke(cli_app, [*args[:3], "--role", "admin", "--password", PASSWORD + "!", "--reset"]
                         ).exit_code == 0
    (user,) = rows(database, ConsoleUser)
    assert user.role == "admin" and user.password_hash.startswith("$argon2id$")
    client = client_for(database, tmp_path)
    assert sign_in(client, "ana", PASSWORD).status_code == 401
    assert sign_in(client, "ana", PASSWORD + "!").status_code == 303
    assert "ana" in client.get("/users").text


# -- in a real browser -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_console(tmp_path):
    """A seeded SQLite console served by uvicorn on a free loopback port."""
    import uvicorn

    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'browser.db'}")
    migrations.upgrade(db)
    ids = seed(db)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings_for(db, tmp_path), clock=Clock()), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", db, ids
    server.should_exit = True
    thread.join(timeout=10)


def test_in_chromium_sign_in_open_an_alert_confirm_a_post_and_export(served_console, tmp_path, monkeypatch):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (bash deploy/local/setup.sh does)")
    from playwright.sync_api import sync_playwright

    url, db, ids = served_console
    shot = tmp_path / "console-alert.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{url}/alerts/{ids['alert']}")
            assert "/login" in page.url  # refused, sent to sign in, and back afterwards
            page.fill("input[name=username]", "rev1")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/alerts/{ids['alert']}")
            mark = page.locator(f"#post-{ids['evidence_post']} mark.evidence")
            assert mark.count() == 1 and mark.inner_text() == EVIDENCE
            assert mark.evaluate("m => getComputedStyle(m).backgroundColor") != "rgba(0, 0, 0, 0)"
            evil = page.locator(f"#post-{ids['evil_post']} blockquote.text")
            assert "<script>document.title='pwned'</script>" in evil.inner_text()
            assert evil.locator("script, img").count() == 0
            assert page.title() != "pwned" and not dialogs
            assert page.locator("svg.chart circle.point.alert").count() >= 1
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the alert page: {shot}")

            post = page.locator(f"#post-{ids['evidence_post']}")
            post.get_by_role("button", name="Confirm severe_adr").click()
            page.wait_for_load_state()
            assert "rev1" in page.locator(f"#post-{ids['evidence_post']} .review-state").inner_text()
            # From the alert list to the alert's posts and back: one click each way.
            page.get_by_role("link", name="Alerts", exact=True).click()
            page.wait_for_url(f"{url}/")
            page.locator(f"a[href='/alerts/{ids['alert']}']").click()
            page.wait_for_url(f"{url}/alerts/{ids['alert']}")
            assert page.locator(f"#post-{ids['evidence_post']} mark.evidence").count() == 1
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    (review,) = rows(db, Review)
    assert (review.kind, review.post_id, review.label, review.shown_label, review.reviewer) == (
        "label", ids["evidence_post"], "severe_adr", "severe_adr", "rev1")
    monkeypatch.setenv("MONITOR_DATABASE__URL", db.url)
    monkeypatch.setenv("MONITOR_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "reviewed.tsv"
    assert CliRunner().invoke(cli_app, ["reviews", "export", TASK, "--out", str(out)]).exit_code == 0
    (example,) = load_examples(out, load_task(TASK)).examples
    assert example.label == "severe_adr" and EVIDENCE in example.text


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_bucket_totals_in_the_database_match_bucketing_the_signals_in_python(database, granularity):
    from monitor.signals.ears import floor_time
    from monitor.storage.console import bucket_totals
    from monitor.storage.queries import flagged_signals

    seed(database)
    since, until = BUCKET - timedelta(days=12), BUCKET + timedelta(days=1)
    engine = create_db_engine(database)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            totals = bucket_totals(session, TASK, since, until, granularity)
            by_source = bucket_totals(session, TASK, since, until, granularity, source="elsewhere")
            expected: dict[datetime, list[float]] = {}
            for _pid, _task, _label, confidence, at, _source, _geo in flagged_signals(session, since, until,
                                                                                      tasks=[TASK]):
                entry = expected.setdefault(floor_time(at, granularity), [0, 0.0])
                entry[0] += 1
                entry[1] += confidence
    finally:
        engine.dispose()
    assert {k: (n, pytest.approx(w)) for k, (n, w) in totals.items()} == {k: (n, w) for k, (n, w) in expected.items()}
    assert sum(n for n, _ in totals.values()) == 30 and by_source == {}


def _second_model(db: DatabaseSettings, n: int = 4) -> list[int]:
    """A model change: ``m-2`` flags the first ``n`` posts of the spike again, more confidently, and predicts
    a second label on the quiet days; returns the posts it flagged."""
    engine = create_db_engine(db)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            spike = list(session.scalars(select(Post).where(Post.created_at >= BUCKET).order_by(Post.id)))[:n]
            for post in spike:
                session.add(Signal(post_id=post.id, task=TASK, model_version="m-2", run="live", label="severe_adr",
                                   confidence=0.97, decided_by="classifier", post_created_at=post.created_at))
                session.add(Prediction(post_id=post.id, task=TASK, model_version="m-2", run="live",
                                       label="no_severe_adr", probabilities={"severe_adr": 0.2, "no_severe_adr": 0.8},
                                       confidence=0.8, escalated=True, created_at=NOW - timedelta(days=3, hours=2)))
            return [p.id for p in spike]
    finally:
        engine.dispose()


def test_bucket_totals_count_a_post_two_models_flagged_once_with_its_higher_confidence(database):
    from monitor.signals.ears import floor_time
    from monitor.storage.console import bucket_totals
    from monitor.storage.queries import flagged_signals

    seed(database)
    twice = _second_model(database)
    since, until = BUCKET - timedelta(days=12), BUCKET + timedelta(days=1)
    engine = create_db_engine(database)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            totals = {g: bucket_totals(session, TASK, since, until, g) for g in ("hour", "day")}
            best: dict[int, tuple[datetime, float]] = {}
            for post_id, _task, _label, confidence, at, _source, _geo in flagged_signals(session, since, until,
                                                                                         tasks=[TASK]):
                if post_id not in best or confidence > best[post_id][1]:
                    best[post_id] = (at, confidence)
    finally:
        engine.dispose()
    assert len(best) == 30 and all(best[p][1] == 0.97 for p in twice)
    for granularity, found in totals.items():
        expected: dict[datetime, list[float]] = {}
        for at, confidence in best.values():
            entry = expected.setdefault(floor_time(at, granularity), [0, 0.0])
            entry[0] += 1
            entry[1] += confidence
        assert {k: (n, pytest.approx(w)) for k, (n, w) in found.items()} == {k: (n, w) for k, (n, w) in
                                                                          expected.items()}
    assert totals["day"][BUCKET][0] == 12  # not 16: the four posts flagged twice count once


def test_model_health_counts_per_day_label_and_version_as_the_rows_say(database):
    from monitor.console.health import HealthCache
    from monitor.storage.console import task_health

    seed(database)
    _second_model(database)
    since, until = NOW - timedelta(days=30), NOW
    engine = create_db_engine(database)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            health = task_health(session, TASK, since=since, until=until)
            rows_ = list(session.scalars(select(Prediction).where(Prediction.task == TASK)))
            cached = HealthCache(600).task_health(session, TASK, since=since, until=until, now=until)
    finally:
        engine.dispose()
    labels: dict[str, int] = {}
    days: dict[str, list[float]] = {}
    for p in rows_:
        labels[p.label] = labels.get(p.label, 0) + 1
        day = days.setdefault(f"{p.created_at.astimezone(UTC):%Y-%m-%d}", [0, 0.0, 0])
        day[0] += 1
        day[1] += p.confidence
        day[2] += int(p.escalated)
    assert health.predictions == 34 and health.label_counts == labels == {"no_severe_adr": 4, "severe_adr": 30}
    assert health.model_versions == ["m-1", "m-2"]
    assert [(d.day, d.predictions, pytest.approx(d.mean_confidence), d.escalated) for d in health.days] == [
        (day, n, pytest.approx(total / n), esc) for day, (n, total, esc) in sorted(days.items())]
    assert (health.explained, health.flipped, health.verdicts) == (2, 1, {"confirm": 1, "reject": 1})
    assert cached == health


def test_model_health_keeps_ended_days_for_its_ttl_and_reads_today_every_time(tmp_path):
    from monitor.console.health import HealthCache

    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'health.db'}")
    migrations.upgrade(db)
    seed(db)
    engine = create_db_engine(db)
    ticks = [0.0]
    cache, fresh = HealthCache(600, monotonic=lambda: ticks[0]), HealthCache(0)
    since, until = NOW - timedelta(days=30), NOW
    try:
        factory = make_sessionmaker(engine)
        with transaction(factory) as session:
            assert cache.task_health(session, TASK, since=since, until=until, now=until).predictions == 30
            # An ended day changes (here: its rows are deleted) and today gains a prediction.
            session.query(Prediction).delete()
            post = session.scalar(select(Post).order_by(Post.id).limit(1))
            session.add(Prediction(post_id=post.id, task=TASK, model_version="m-3", run="live", label="severe_adr",
                                   probabilities={"severe_adr": 0.9}, confidence=0.9, escalated=False,
                                   created_at=NOW - timedelta(minutes=5)))
        with transaction(factory) as session:
            held = cache.task_health(session, TASK, since=since, until=until, now=until)
            assert (held.predictions, held.model_versions) == (31, ["m-1", "m-3"])  # the ended day from the cache
            assert fresh.task_health(session, TASK, since=since, until=until, now=until).predictions == 1
            ticks[0] = 601.0
            assert cache.task_health(session, TASK, since=since, until=until, now=until).predictions == 1
    finally:
        engine.dispose()


def test_a_text_search_reads_a_bounded_number_of_signals_per_page_and_searches_on(database):
    from monitor.storage.console import SignalFilter, list_signals

    ids = seed(database)
    quiet = ids["quiet_post"]  # the oldest post: "day 0 post 0: mild nausea, kept taking it"
    engine = create_db_engine(database)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            unbounded = list_signals(session, SignalFilter(text="DAY 0 post"), limit=5)
            pages, cursor, found = 0, None, []
            while True:
                page = list_signals(session, SignalFilter(text="DAY 0 post"), limit=5, cursor=cursor, scan=7)
                pages += 1
                found += [row.post_id for row in page.rows]
                if pages == 1:  # the seven newest signals hold no match: the page says how far it read
                    assert page.rows == [] and page.searched_to is not None and page.next is not None
                if page.next is None:
                    break
                cursor = page.next
            every = list_signals(session, SignalFilter(), limit=100, scan=7)
    finally:
        engine.dispose()
    assert unbounded.searched_to is None and [r.post_id for r in unbounded.rows] == [quiet + 1, quiet]
    assert found == [quiet + 1, quiet] and pages == 5  # 30 signals read seven at a time
    assert len(every.rows) == 30 and every.searched_to is None  # the budget bounds text searches only


def test_the_demo_adds_a_reviewer_with_a_random_password_only_to_a_database_without_accounts(tmp_path):
    from monitor.cli.demo import DEMO_USER, demo_reviewer

    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'demo.db'}")
    migrations.upgrade(db)
    engine = create_db_engine(db)
    try:
        factory = make_sessionmaker(engine)
        password = demo_reviewer(factory)
        assert password is not None and len(password) >= 16
        assert demo_reviewer(factory) is None  # an account exists now: nothing added, nothing reset
    finally:
        engine.dispose()
    (user,) = rows(db, ConsoleUser)
    assert (user.username, user.role, user.active) == (DEMO_USER, "reviewer", True)
    assert password not in user.password_hash
    client = client_for(db, tmp_path)
    assert sign_in(client, DEMO_USER, "wrong password").status_code != 303
    signed_in = sign_in(client, DEMO_USER, password)
    assert signed_in.status_code == 303 and client.get("/").status_code == 200


def test_the_signals_page_says_how_far_a_bounded_text_search_read_and_links_to_the_rest(tmp_path):
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'search.db'}")
    migrations.upgrade(db)
    ids = seed(db)
    client = client_for(db, tmp_path)
    console = client.app.state.console
    # Below the setting's floor (1,000) to read a 30-signal database a few signals at a time.
    console.settings = console.settings.model_copy(update={"search_scan_rows": 12})
    sign_in(client, "viewer1")
    page = " ".join(client.get("/signals?q=day+0+post").text.split())
    assert "None of the signals this page searched match." in page
    assert "A text search reads 12 signals (of every task) per page: this one searched back to 2026-03-" in page
    found: list[str] = []
    url: str | None = "/signals?q=day+0+post"
    while url:
        page = client.get(url).text
        found += re.findall(r'href="/posts/(\d+)\?task=', page)
        link = re.search(r'rel="next" href="(\?[^"]+)">(Search older signals|Older)', page)
        url = "/signals" + link[1].replace("&amp;", "&") if link else None
    assert found == [str(ids["quiet_post"] + 1), str(ids["quiet_post"])]
