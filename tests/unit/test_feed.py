"""Posts from files (JSONL records and labelled files through a task), their times, and the rate limiter."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.errors import DataError
from monitor.feed import (
    RateLimiter,
    parse_date_value,
    posts_from_file,
    shift_times,
    synthetic_times,
    timestamp_ms,
)
from monitor.records import Post, decode_post, encode_post
from monitor.tasks import load_task
from monitor.corpus import BadRow

RMHD27 = Path("/work/shared/data/rmhd27/rmhd27_dev.csv")
NOW = datetime(2024, 5, 10, 15, 30, tzinfo=UTC)
MIDNIGHT = datetime(2024, 5, 10, tzinfo=UTC)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- JSONL post records


def test_jsonl_posts_keep_ids_as_strings_and_take_times_in_row_order(tmp_path: Path):
    path = write_lines(tmp_path / "posts.jsonl", [
        "\ufeff" + json.dumps({"id": "a", "text": "one", "created_at": "2024-01-02T03:04:05.678Z", "source": "reddit"}),
        "",
        '{"id": 1650231476214267904, "text": "two"}',
        json.dumps({"id": "c", "text": "three", "labels": {"task_x": "pos"}}),
        "   ",
        json.dumps({"id": "d", "text": "four \u0000"}),
    ])
    posts = list(posts_from_file(path, now=NOW, source="feed"))
    assert [p.id for p in posts] == ["a", "1650231476214267904", "c", "d"]
    assert all(isinstance(p.id, str) for p in posts)
    assert posts[0].created_at == datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert [p.source for p in posts] == ["reddit", "feed", "feed", "feed"]  # --source only where none is named
    assert posts[2].labels == {"task_x": "pos"} and posts[3].text == "four "
    # Records without created_at: row i of 4 over the 7 days before the last midnight.
    span = timedelta(days=7)
    assert [p.created_at for p in posts[1:]] == [MIDNIGHT - span + span * i / 4 for i in (1, 2, 3)]


def test_jsonl_bad_line_names_file_line_and_reason(tmp_path: Path):
    path = write_lines(tmp_path / "posts.jsonl", [
        '{"id": "a", "text": "ok"}',
        "",
        '{"id": 1.5, "text": "float id"}',
        '{"id": "c", "text": "   "}',
        '{"id": "d", "text": "ok too"}',
    ])
    with pytest.raises(DataError, match=rf"^{path}:3: wrong_type: id must be"):
        list(posts_from_file(path, now=NOW))
    skipped: list[BadRow] = []
    posts = list(posts_from_file(path, now=NOW, skip_bad_rows=True, on_skip=skipped.append))
    assert [p.id for p in posts] == ["a", "d"]
    assert [(b.line, b.reason.split(":")[0]) for b in skipped] == [(3, "wrong_type"), (4, "blank_text")]


def test_table_file_without_a_task_is_refused(tmp_path: Path):
    path = write_lines(tmp_path / "posts.csv", ["id,text", "1,hi"])
    with pytest.raises(DataError, match="pass a task"):
        list(posts_from_file(path))
    with pytest.raises(DataError, match="no such file"):
        list(posts_from_file(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------- labelled files through a task


@pytest.fixture(scope="module")
def rmhd27_posts() -> list[Post]:
    return list(posts_from_file(RMHD27, task=load_task("rmhd27_social_anxiety")))


def test_rmhd27_dev_becomes_4914_labelled_posts_timed_by_their_date(rmhd27_posts: list[Post]):
    posts = rmhd27_posts
    assert len(posts) == 4914
    assert all(isinstance(p.id, str) for p in posts) and len({p.id for p in posts}) == 4914
    assert (posts[0].id, posts[-1].id) == ("1", "7016")
    labels = Counter(p.labels["rmhd27_social_anxiety"] for p in posts)
    assert labels == {"other": 4732, "social_anxiety": 182}
    assert {p.source for p in posts} == {"rmhd27_dev"}
    assert posts[0].created_at == datetime(2019, 2, 19, tzinfo=UTC)  # row 1: 2019/02/19, first of its day
    assert all(datetime(2018, 11, 1, tzinfo=UTC) <= p.created_at < datetime(2019, 11, 2, tzinfo=UTC) for p in posts)
    # Posts of one day are spread over it in file order: every post has its own time.
    assert len({p.created_at for p in posts}) == 4914
    by_day: dict[datetime, list[datetime]] = {}
    for post in posts:
        by_day.setdefault(post.created_at.replace(hour=0, minute=0, second=0), []).append(post.created_at)
    assert all(times == sorted(times) for times in by_day.values())
    assert all(decode_post(encode_post(p), fallback_time=NOW) == p for p in posts[:200])


def test_labelled_file_without_a_date_column_gets_deterministic_synthetic_times(tmp_path: Path):
    path = write_lines(tmp_path / "sample.csv", ["row_id,subreddit,post", "10,socialanxiety,I froze at the till",
                                                 "11,guns,cleaning kit", "12,teaching,marking again"])
    task = load_task("rmhd27_social_anxiety")
    posts = list(posts_from_file(path, task=task, now=NOW, source="demo"))
    assert [(p.id, p.source, p.labels) for p in posts] == [
        ("10", "demo", {"rmhd27_social_anxiety": "social_anxiety"}),
        ("11", "demo", {"rmhd27_social_anxiety": "other"}),
        ("12", "demo", {"rmhd27_social_anxiety": "other"}),
    ]
    assert [p.created_at for p in posts] == synthetic_times(3, now=NOW)
    assert posts[0].created_at == MIDNIGHT - timedelta(days=7) and posts[-1].created_at < MIDNIGHT
    assert posts == list(posts_from_file(path, task=task, now=NOW + timedelta(hours=5), source="demo"))


def test_labelled_file_with_bad_dates_and_unix_seconds(tmp_path: Path):
    task = load_task("rmhd27_social_anxiety")
    path = write_lines(tmp_path / "dated.csv", ["row_id,subreddit,created_utc,post", "1,guns,1546300800,a",
                                                '2,guns,someday,"b', 'still b"', "3,guns,1546300800.5,c"])
    with pytest.raises(DataError, match=rf"^{path}:3: bad_created_at"):
        list(posts_from_file(path, task=task))
    skipped: list[BadRow] = []
    posts = list(posts_from_file(path, task=task, skip_bad_rows=True, on_skip=skipped.append))
    assert [p.id for p in posts] == ["1", "3"] and [b.line for b in skipped] == [3]
    assert posts[0].created_at == datetime(2019, 1, 1, tzinfo=UTC)
    assert posts[1].created_at == datetime(2019, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)


def test_date_cells():
    assert parse_date_value("2019/02/19") == (datetime(2019, 2, 19, tzinfo=UTC), False)
    assert parse_date_value(" 2019-02-19 10:11:12 ") == (datetime(2019, 2, 19, 10, 11, 12, tzinfo=UTC), True)
    assert parse_date_value("0") == (datetime(1970, 1, 1, tzinfo=UTC), True)
    for bad in ("", "19/02/2019", "2019/2/19", "-5", "9" * 30, "\u0661\u0662"):
        with pytest.raises(ValueError):
            parse_date_value(bad)


# ---------------------------------------------------------------- times


def test_timestamp_ms_is_exact_and_shift_keeps_spacing():
    assert timestamp_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert timestamp_ms(datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC)) == 1_714_564_800_999
    posts = [Post(id=str(i), text="x", created_at=datetime(2019, 1, 1 + i, tzinfo=UTC)) for i in range(3)]
    moved = shift_times(posts, newest=NOW)
    assert moved[-1].created_at == NOW
    assert [b.created_at - a.created_at for a, b in zip(moved, moved[1:])] == [timedelta(days=1)] * 2
    assert [p.id for p in moved] == ["0", "1", "2"] and shift_times([], newest=NOW) == []


# ---------------------------------------------------------------- pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rate_limiter_paces_events():
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock)
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.25, 0.5]  # claimed back to back
    clock.now += 10  # an idle spell does not bank a burst
    assert limiter.reserve() == 0.0 and limiter.reserve() == 0.25


def test_rate_limiter_holds_the_rate_over_time_and_allows_a_burst():
    clock = FakeClock()
    limiter = RateLimiter(50.0, burst=5, clock=clock)
    start = clock.now
    for _ in range(5):
        limiter.wait(clock.sleep)
    assert clock.now == start  # the burst goes at once
    for _ in range(500):
        limiter.wait(clock.sleep)
    assert clock.now - start == pytest.approx(500 / 50.0)
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(1.0, burst=0)
