"""The console's pure parts: the evidence marking, the chart markup, tokens and keys, the export format."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from monitor.config import ConsoleSettings
from monitor.console import auth
from monitor.console.chart import SeriesPoint, series_svg
from monitor.console.export import raw_label_value, write_training_file
from monitor.console.highlight import split_evidence
from monitor.corpus import load_examples
from monitor.errors import ConfigError, DataError
from monitor.storage.reviews import ReviewedPost
from monitor.tasks import LabelBin, LabelRule, builtin_task_names, load_task

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_evidence_is_found_exactly_then_ignoring_case_and_spacing():
    assert split_evidence("I had a rash all over", "rash all over") == ("I had a ", "rash all over", "")
    assert split_evidence("I had a Rash  all\nover!", " rash all over ") == ("I had a ", "Rash  all\nover", "!")
    assert split_evidence("nothing here", "rash") is None
    assert split_evidence("text", None) is None and split_evidence("text", "  ") is None
    assert split_evidence("a (b) c", "(b)") == ("a ", "(b)", " c")  # quotes are text, not patterns


def test_the_chart_escapes_its_text_and_marks_the_alert():
    points = [SeriesPoint(T0 + timedelta(days=i), float(i), 1.0 if i > 2 else None, 2.0 if i > 2 else None, i == 5)
              for i in range(6)]
    svg = series_svg(points, highlight=T0 + timedelta(days=5), title="<script>x</script>", unit="posts & co")
    assert "<script>" not in svg and "&lt;script&gt;x&lt;/script&gt;" in svg and "posts &amp; co" in svg
    assert svg.count('class="point alert current"') == 1 and 'class="band"' in svg
    assert series_svg([], highlight=None, title="t", unit="u").startswith('<svg class="chart"')


def test_tokens_are_keyed_and_the_csrf_check_compares_them():
    key, other = b"k" * 32, b"o" * 32
    token = auth.new_token()
    assert auth.token_hash(key, token) != auth.token_hash(other, token) != token
    good = auth.csrf_token(key, token)
    assert auth.csrf_ok(key, token, good)
    assert not auth.csrf_ok(key, token, auth.csrf_token(other, token))
    assert not auth.csrf_ok(key, None, good) and not auth.csrf_ok(key, token, "")


def test_passwords_hash_with_argon2_and_verify_in_constant_shape():
    hashed = auth.hash_password("a long enough password")
    assert hashed.startswith("$argon2id$")
    assert auth.verify_password(hashed, "a long enough password")
    assert not auth.verify_password(hashed, "another password!")
    assert not auth.verify_password(None, "a long enough password")
    with pytest.raises(ConfigError):
        auth.hash_password("short")
    with pytest.raises(ConfigError):
        auth.check_username("bad name<")


def test_the_console_key_is_made_once_private_and_then_reused(tmp_path):
    first = auth.load_secret_key(ConsoleSettings(), tmp_path)
    assert len(first) >= 32 and oct(os.stat(tmp_path / "console.key").st_mode & 0o777) == "0o600"
    assert auth.load_secret_key(ConsoleSettings(), tmp_path) == first
    assert auth.load_secret_key(ConsoleSettings(secret_key="x" * 20), tmp_path) == b"x" * 20
    with pytest.raises(ConfigError):
        auth.load_secret_key(ConsoleSettings(secret_key="short"), tmp_path)


def test_the_secure_cookie_is_on_unless_the_console_binds_the_loopback():
    assert not ConsoleSettings().cookie_secure
    assert ConsoleSettings(host="0.0.0.0").cookie_secure
    assert not ConsoleSettings(host="0.0.0.0", secure_cookie=False).cookie_secure


def test_every_label_of_a_rule_has_a_raw_value_that_maps_back():
    rule = LabelRule(field="subreddit", map={"socialanxiety": "sad"}, default="other")
    assert rule.label_for(raw_label_value(rule, "other")) == "other"
    bins = LabelRule(field="rating", bins=(LabelBin(label="neg", max=4), LabelBin(label="pos", min=7)))
    assert raw_label_value(bins, "neg") == "4" and raw_label_value(bins, "pos") == "7"
    with pytest.raises(DataError):
        raw_label_value(rule, "nope")


@pytest.mark.parametrize("name", builtin_task_names())
def test_an_export_reads_back_as_the_same_examples_for_every_shipped_task(name, tmp_path):
    task = load_task(name)
    posts = [ReviewedPost(i, "src", f"id{i}", f"post {i} says, \"quoted\"\twith\ttabs | and <b>tags</b>", label,
                          "ana", T0) for i, label in enumerate(task.labels)]
    out = tmp_path / "reviewed.jsonl"
    assert write_training_file(task, posts, out) == len(posts)
    examples = load_examples(out, task).examples
    assert [e.label for e in examples] == list(task.labels)
    assert all(f"post {i} says" in e.text and "<b>tags</b>" in e.text for i, e in enumerate(examples))
    with pytest.raises(DataError, match="no label"):
        write_training_file(task, [ReviewedPost(9, "s", "9", "t", "not-a-label", "ana", T0)], tmp_path / "x.jsonl")
