import random
import re
import time
from pathlib import Path

import pytest

from monitor.errors import DataError
from monitor.tasks import load_task
from monitor.corpus import BadRow, Example, label_counts, load_examples
from monitor.encoding import normalise_text
from monitor.training.data import near_duplicate_pairs, split_examples

SHARED_DATA = Path("/work/shared/data")
DRUGLIB = SHARED_DATA / "druglib" / "drugLibTrain_raw.tsv"
RMHD27 = SHARED_DATA / "rmhd27" / "rmhd27_dev.csv"
CSSRS = SHARED_DATA / "cssrs" / "cssrs_dev.csv"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def jsonl_task():
    """The SMM4H task 1 framing, reading JSONL instead."""
    task = load_task("smm4h23_task1_covid_diagnosis")
    return task.model_copy(update={"data": task.data.model_copy(update={"format": "jsonl"})})


# ---------------------------------------------------------------- loaders on small files


def test_csv_with_multiline_quoted_fields_and_crlf_reports_the_starting_line(tmp_path):
    path = write(tmp_path, "posts.csv", (
        "row_id,subreddit,date,post\r\n"
        '1,socialanxiety,2019/01/01,"first line\r\nsecond line"\r\n'       # lines 2-3
        '2,guns,2019/01/02,"a ""quoted"" word, with a comma"\r\n'         # line 4
        '3,anxiety,2019/01/03,"three\r\n\r\nlines"\r\n'                   # lines 5-7
        "\r\n"                                                            # line 8, blank
        "4,teaching,2019/01/04,\r\n"                                      # line 9: empty text
        "5,teaching,2019/01/05\r\n"                                       # line 10: a field short
        '6,,2019/01/06,"no subreddit"\r\n'                                # line 11: blank label
    ))
    task = load_task("rmhd27_social_anxiety")
    with pytest.raises(DataError, match=re.escape(f"{path}:9: empty text")):
        load_examples(path, task)
    result = load_examples(path, task, skip_bad_rows=True)
    assert result.bad_rows == (BadRow(9, "empty text"), BadRow(10, "expected 4 fields, got 3"),
                               BadRow(11, "missing label in 'subreddit'"))
    assert result.examples == (
        Example("1", "first line second line", "social_anxiety"),
        Example("2", 'a "quoted" word, with a comma', "other"),
        Example("3", "three lines", "other"),
    )


@pytest.mark.parametrize("first_column", ["", "num"])
def test_druglib_layout_with_named_or_unnamed_id_column(tmp_path, first_column):
    columns = [first_column, "DrugName", "rating", "effectiveness", "sideEffects", "condition",
               "benefitsReview", "sideEffectsReview", "commentsReview"]
    header = "\t".join(columns) + "\r\n"
    rows = (
        '0042\tenalapril\t4\tHighly Effective\tMild Side Effects\thf\t"slowed it\r\n\r\ndown"\tcough\tmonitor bp\r\n'
        "0043\tponstel\t10\tHighly Effective\tSevere Side Effects\tcramps\tworks\t\ttakes the edge off\r\n"
        "0044\tponstel\tten\tHighly Effective\tNo Side Effects\tcramps\tfine\tnone\tok\r\n"
    )
    path = write(tmp_path, "drugs.tsv", header + rows)
    sentiment = load_examples(path, load_task("druglib_sentiment"), skip_bad_rows=True)
    assert [(e.id, e.label) for e in sentiment.examples] == [("0042", "negative"), ("0043", "positive")]
    assert sentiment.examples[0].text == "slowed it down | cough | monitor bp"
    assert sentiment.examples[1].text == "works | takes the edge off"  # an empty field is left out
    assert sentiment.bad_rows == (BadRow(6, "unknown label value 'ten' in 'rating'"),)
    adverse = load_examples(path, load_task("druglib_adverse"))
    assert [e.label for e in adverse.examples] == ["no_severe_adr", "severe_adr", "no_severe_adr"]


def test_smm4h_tsv_keeps_long_and_zero_padded_ids_as_strings(tmp_path):
    path = write(tmp_path, "train.tsv", (
        "\ufefftweet_id\ttext\tlabel\n"
        "1234567890123456789\tTested positive today @bob https://t.co/x\t1\n"
        "00123\tmy cousin has covid\t0\n"
        "9007199254740993\tstill waiting on my PCR\t0\n"
    ))
    examples = load_examples(path, load_task("smm4h23_task1_covid_diagnosis")).examples
    assert [e.id for e in examples] == ["1234567890123456789", "00123", "9007199254740993"]
    assert examples[0] == Example("1234567890123456789", "Tested positive today @USER HTTPURL", "self_report")
    assert [e.label for e in examples] == ["self_report", "other", "other"]


def test_smm4h_csv_shows_the_therapy_when_the_column_is_there(tmp_path):
    task = load_task("smm4h23_task2_therapy_sentiment")
    with_therapy = write(tmp_path, "task2.csv", (
        "tweet_id,therapy,text,label\n"
        '15309,meditation,"Meditation is the best thing I did, honestly",positive\n'
        "15262,,no therapy given here,Neutral\n"
        "15263,acupuncture,did nothing for me,angry\n"
    ))
    result = load_examples(with_therapy, task, skip_bad_rows=True)
    assert [e.text for e in result.examples] == [
        "therapy: meditation | Meditation is the best thing I did, honestly", "no therapy given here"]
    assert [e.label for e in result.examples] == ["positive", "neutral"]
    assert result.bad_rows == (BadRow(4, "unknown label value 'angry' in 'label'"),)
    without = write(tmp_path, "task2.txt", "tweet_id\ttext\tlabel\n7\tibuprofen helps\tpositive\n")
    assert load_examples(without, task).examples == (Example("7", "ibuprofen helps", "positive"),)


def test_jsonl_bad_line_is_named_and_numbers_stay_exact(tmp_path):
    path = write(tmp_path, "posts.jsonl", (
        '{"tweet_id": 1234567890123456789, "text": "positive PCR yesterday", "label": 1}\n'
        '{"tweet_id": "2", "text": "broken", "label": 0\n'
        "\n"
        '{"tweet_id": "3", "text": "  ", "label": "0"}\n'
        '{"tweet_id": "4", "text": "fine here", "label": "0"}\n'
        '["not", "an", "object"]\n'
        '{"tweet_id": "4", "text": "same id again", "label": "0"}\n'
    ))
    task = jsonl_task()
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid JSON")):
        load_examples(path, task)
    result = load_examples(path, task, skip_bad_rows=True)
    assert result.examples == (Example("1234567890123456789", "positive PCR yesterday", "self_report"),
                               Example("4", "fine here", "other"))
    assert [(b.line, b.reason.split(":")[0]) for b in result.bad_rows] == [
        (2, "not valid JSON"), (4, "empty text"), (6, "expected a JSON object, got list"),
        (7, "repeated id '4' (first on line 5)")]


def test_python_list_rendering_including_a_truncated_one(tmp_path):
    path = write(tmp_path, "users.csv", (
        "User,Post,Label\n"
        "user-1,\"['I feel fine', \"\"it's ok &amp; calm\"\"]\",Supportive\n"
        "user-2,\"['first post', 'second post cut off mid-sen\",Ideation\n"
    ))
    examples = load_examples(path, load_task("cssrs_suicide_risk")).examples
    assert examples[0] == Example("user-1", "I feel fine | it's ok & calm", "Supportive")
    assert examples[1] == Example("user-2", "first post | second post cut off mid-sen", "Ideation")


def test_file_level_problems_fail_whatever_skip_says(tmp_path):
    task = load_task("rmhd27_social_anxiety")
    no_post = write(tmp_path, "a.csv", "row_id,subreddit,date\n1,guns,2019\n")
    with pytest.raises(DataError, match=r"a\.csv:1: missing column\(s\) \['post'\]"):
        load_examples(no_post, task, skip_bad_rows=True)
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "absent.csv", task)
    latin1 = tmp_path / "b.csv"
    latin1.write_bytes("row_id,subreddit,date,post\n1,guns,2019,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(latin1, task)
    with pytest.raises(DataError, match="cannot tell the format"):
        load_examples(write(tmp_path, "c.xlsx", "x"), load_task("smm4h23_task1_covid_diagnosis").model_copy(
            update={"data": task.data.model_copy(update={"format": "auto"})}))


# ---------------------------------------------------------------- the shared real files


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: these tests read the shared labelled data (see its README.md)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def rmhd27(shared_data):
    return load_examples(RMHD27, load_task("rmhd27_social_anxiety"))


def share(counts: dict[str, int], label: str) -> float:
    return counts[label] / sum(counts.values())


def test_druglib_loads_under_both_framings(shared_data):
    sentiment = load_examples(DRUGLIB, load_task("druglib_sentiment"))
    assert len(sentiment.examples) == 3107 and not sentiment.bad_rows
    counts = label_counts(sentiment.examples)
    assert counts == {"negative": 661, "neutral": 316, "positive": 2130}
    assert abs(share(counts, "positive") - 0.68) < 0.02 and abs(share(counts, "negative") - 0.22) < 0.02
    adverse = label_counts(load_examples(DRUGLIB, load_task("druglib_adverse")).examples)
    assert adverse == {"no_severe_adr": 2563, "severe_adr": 544}
    assert abs(share(adverse, "severe_adr") - 0.18) < 0.01
    assert all(e.id.isdigit() and e.text for e in sentiment.examples)


def test_rmhd27_loads_with_182_positives(rmhd27):
    assert len(rmhd27.examples) == 4914 and not rmhd27.bad_rows
    assert label_counts(rmhd27.examples) == {"other": 4732, "social_anxiety": 182}


def test_cssrs_loads_every_user_even_the_truncated_lists(shared_data):
    result = load_examples(CSSRS, load_task("cssrs_suicide_risk"))
    assert len(result.examples) == 350 and not result.bad_rows
    counts = label_counts(result.examples)
    assert counts == {"Attempt": 31, "Behavior": 54, "Ideation": 120, "Indicator": 69, "Supportive": 76}
    assert abs(share(counts, "Attempt") - 0.09) < 0.01
    assert not any(e.text.startswith("[") for e in result.examples)  # the rendering was taken apart


def test_loaded_text_is_already_normal(rmhd27):
    assert all(normalise_text(e.text) == e.text for e in rmhd27.examples)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("I &amp; you &lt;3", "I & you <3"),
        ("double &amp;amp; escaped", "double & escaped"),
        ("hi @jane_doe and @Bob99!", "hi @USER and @USER!"),
        ("mail me at jane@example.org", "mail me at jane@example.org"),
        ("thanks u/some-user and /u/other", "thanks @USER and @USER"),
        ("see https://t.co/abc?x=1 and www.nhs.uk/covid.", "see HTTPURL and HTTPURL."),
        ("(link: http://example.com/a)", "(link: HTTPURL)"),
        ("ｆｕｌｌ ｗｉｄｔｈ ﬁ ①", "full width fi 1"),
        ("zero\u200bwidth\u200d and\ufeff bom", "zerowidth and bom"),
        ("tab\there\r\nnew\x0bline\x00nul", "tab here new line nul"),
        ("  lots   of\n\n space  ", "lots of space"),
        ("&#64;handle", "@USER"),
    ],
)
def test_normalise_text(raw, expected):
    assert normalise_text(raw) == expected


def test_normalise_text_is_idempotent():
    rng = random.Random(7)
    alphabet = list("ab @&;#x:/.w") + ["&amp;", "&#38;", "http://", "www.", "u/", "\u200b", "\u00a0", "ﬁ", "＆",
                                        "&lt;", "\n", "\x85", "e\u0301", "@", "amp;"]
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    for text in samples:
        once = normalise_text(text)
        assert normalise_text(once) == once, repr(text)


# ---------------------------------------------------------------- duplicates and splits


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def trigrams(text: str) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w)} if len(w) <= 3 else set(zip(w, w[1:], w[2:], strict=False))


def brute_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


@pytest.fixture(scope="module")
def planted() -> list[Example]:
    """300 random posts with known duplicates planted among them."""
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(800)]
    labels = ["common"] * 180 + ["middle"] * 90 + ["rare"] * 27 + ["tiny"] * 3
    rng.shuffle(labels)
    examples = [Example(f"p{i}", " ".join(rng.choices(vocabulary, k=40)), label) for i, label in enumerate(labels)]
    extra = []
    for k in range(10):  # exact: only case and spacing differ
        source = examples[k * 7]
        extra.append(Example(f"x{k}", "  " + source.text.upper() + " ", source.label))
    for k in range(8):  # near: the last of 40 words replaced, Jaccard of word trigrams 37/39
        source = examples[k * 11 + 1]
        changed = source.text.split()
        changed[-1] = "replaced"
        extra.append(Example(f"n{k}", " ".join(changed), source.label))
    for k in range(4):  # the same text with another label
        source = examples[200 + k * 13]  # apart from the sources above
        other = "middle" if source.label != "middle" else "common"
        extra.append(Example(f"c{k}", source.text, other))
    return examples + extra


def test_split_removes_planted_duplicates_and_reports_them(planted):
    splits = split_examples(planted, seed=1, near_duplicate_threshold=0.9)
    report = splits.report
    assert (report.exact_duplicates_removed, report.near_duplicates_removed, report.conflicting_label_dropped) \
        == (10, 8, 8)
    assert report.kept == len(planted) - 10 - 8 - 8 == len(splits.train) + len(splits.val) + len(splits.test)
    ids = {e.id for part in (splits.train, splits.val, splits.test) for e in part}
    assert not any(i.startswith(("x", "n", "c")) for i in ids)  # the first of each group is kept
    side = {e.id: name for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))
            for e in part}
    kept = [e for e in planted if e.id in side]
    for a in range(len(kept)):
        for b in range(a + 1, len(kept)):
            x, y = kept[a], kept[b]
            if side[x.id] != side[y.id]:
                assert " ".join(words(x.text)) != " ".join(words(y.text))
                assert brute_jaccard(trigrams(x.text), trigrams(y.text)) < 0.9


def test_split_is_stratified_and_covers_small_labels(planted):
    splits = split_examples(planted, seed=5)
    total = label_counts(splits.train + splits.val + splits.test)
    val, test = label_counts(splits.val), label_counts(splits.test)
    for label in ("common", "middle", "rare"):
        assert abs(test[label] / total[label] - 0.2) < 0.03 and abs(val[label] / total[label] - 0.1) < 0.03
    assert val["tiny"] == test["tiny"] == 1 and label_counts(splits.train)["tiny"] == 1
    two = [Example("a", "alpha one", "x"), Example("b", "beta two", "x"), Example("c", "gamma", "y")] + [
        Example(f"y{i}", f"text number {i} here", "y") for i in range(20)]
    small = split_examples(two, seed=0)
    assert label_counts(small.train)["x"] == 2  # too few to spread: all train


def test_split_is_deterministic_under_a_seed(planted):
    first, again = split_examples(planted, seed=11), split_examples(list(planted), seed=11)
    assert first == again
    other = split_examples(planted, seed=12)
    assert {e.id for e in other.test} != {e.id for e in first.test}
    assert other.report == first.report  # deduplication does not depend on the seed


def test_near_duplicate_pairs_match_brute_force():
    rng = random.Random(9)
    base = [frozenset(rng.sample(range(400), rng.randint(1, 40))) for _ in range(60)]
    sets = base + [frozenset(list(s)[: max(1, len(s) - rng.randint(0, 4))]) | {1000 + i} for i, s in enumerate(base)]
    for threshold in (0.5, 0.75, 0.9, 1.0):
        expected = [(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))
                    if brute_jaccard(set(sets[i]), set(sets[j])) >= threshold]
        assert near_duplicate_pairs(sets, threshold) == expected


def test_split_of_rmhd27_is_fast_and_keeps_exact_duplicates_apart(rmhd27):
    start = time.perf_counter()
    splits = split_examples(rmhd27.examples, seed=13)
    seconds = time.perf_counter() - start
    assert seconds < 10, f"splitting 4,914 posts took {seconds:.1f}s"
    keys = [{" ".join(words(e.text)) for e in part} for part in (splits.train, splits.val, splits.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert 30 <= label_counts(splits.test)["social_anxiety"] <= 42
    assert label_counts(splits.val)["social_anxiety"] >= 15
