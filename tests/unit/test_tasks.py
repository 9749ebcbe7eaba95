from pathlib import Path

import pytest
from pydantic import ValidationError

from monitor.errors import DataError
from monitor.tasks import TaskDefinition, builtin_task_names, load_task

BUILTINS = {
    "smm4h23_task1_covid_diagnosis",
    "smm4h23_task2_therapy_sentiment",
    "smm4h23_task4_sad_diagnosis",
    "druglib_sentiment",
    "druglib_adverse",
    "rmhd27_social_anxiety",
    "cssrs_suicide_risk",
}

USER_TASK = '''
name = "vaccine_hesitancy"
title = "Vaccine hesitancy"
description = "Binary: the author hesitates to be vaccinated."
labels = ["other", "hesitant"]
signal_labels = ["hesitant"]
metric = "f1_positive"
positive_label = "hesitant"

[data]
format = "jsonl"
id_field = "id"
text_fields = ["text"]

[data.label]
field = "label"
map = { "1" = "hesitant", "0" = "other" }

[prompt]
version = "1"
signal_definition = "The author says they are unsure about or against getting vaccinated themselves."
counts = ["Doubts about their own vaccination."]
does_not_count = ["News about vaccines."]

[[prompt.examples]]
text = "Not getting the booster, the last one floored me for a week."
predicted_label = "hesitant"
verdict = "confirm"
rationale = "The author refuses their own booster."
evidence = "Not getting the booster"

[[prompt.examples]]
text = "Clinic near me has boosters on walk-in today."
predicted_label = "hesitant"
verdict = "reject"
corrected_label = "other"
rationale = "Information about availability, no hesitancy of the author's own."
evidence = "boosters on walk-in today"
'''


def write(tmp_path: Path, text: str, name: str = "task.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        load_task(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_builtin_names_are_the_shipped_files():
    assert set(builtin_task_names()) == BUILTINS


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_each_builtin_loads_and_is_consistent(name):
    task = load_task(name)
    assert isinstance(task, TaskDefinition) and task.name == name
    assert set(task.signal_labels) < set(task.labels)
    assert task.data.label.outputs() == set(task.labels)
    prompt = task.prompt
    assert prompt.confirm_example.evidence in prompt.confirm_example.text
    assert prompt.reject_example.corrected_label in task.labels
    assert task.scored_labels
    with pytest.raises(ValidationError, match="frozen"):
        task.name = "other"  # type: ignore[misc]


def test_builtin_framings_say_what_the_readme_says():
    drug = load_task("druglib_sentiment")
    rule = drug.data.label
    assert [rule.label_for(str(r)) for r in range(1, 11)] == ["negative"] * 4 + ["neutral"] * 2 + ["positive"] * 4
    assert rule.label_for("11") == "positive" and rule.label_for("4.5") is None and rule.label_for("n/a") is None
    assert drug.data.id_field == ("num", "")
    adverse = load_task("druglib_adverse").data.label
    assert adverse.label_for("Extremely Severe Side Effects") == "severe_adr"
    assert adverse.label_for("moderate side effects") == "no_severe_adr"
    assert adverse.label_for("Unknown") is None  # every level mapped, no default
    reddit = load_task("rmhd27_social_anxiety")
    assert reddit.data.label.label_for("SocialAnxiety") == "social_anxiety"
    assert reddit.data.label.label_for("anxiety") == "other"
    cssrs = load_task("cssrs_suicide_risk")
    assert cssrs.metric == "macro_f1" and set(cssrs.signal_labels) == {"Ideation", "Behavior", "Attempt"}
    assert cssrs.data.text_format == "python_list"
    therapy = load_task("smm4h23_task2_therapy_sentiment")
    assert therapy.metric == "micro_f1" and therapy.scored_labels == therapy.labels
    assert therapy.text_fields == ("therapy", "text")
    covid = load_task("smm4h23_task1_covid_diagnosis")
    assert covid.scored_labels == ("self_report",) and covid.data.label.label_for("1") == "self_report"


def test_a_user_task_file_loads_by_path(tmp_path):
    task = load_task(write(tmp_path, USER_TASK))
    assert task.name == "vaccine_hesitancy" and task.data.id_field == ("id",)
    assert load_task(str(tmp_path / "task.toml")) == task


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="built-in tasks are .*druglib_sentiment"):
        load_task("no_such_task")
    with pytest.raises(DataError, match="no such task file"):
        load_task(tmp_path / "absent.toml")


def test_toml_syntax_error_names_the_file(tmp_path):
    assert "not valid TOML" in load_error(tmp_path, USER_TASK.replace('title = "Vaccine', 'title = Vaccine'))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('evidence = "Not getting the booster"', 'evidence = "refuses the vaccine"'),
         "does not occur in the example text"),
        (('verdict = "reject"\ncorrected_label = "other"', 'verdict = "confirm"'), "one 'confirm' and one 'reject'"),
        (('positive_label = "hesitant"\n', ""), "needs positive_label"),
        (('signal_labels = ["hesitant"]', 'signal_labels = ["hesitnat"]'), "not among labels"),
        (('"0" = "other"', '"0" = "otherr"'), "produces 'otherr'"),
        (('text_fields = ["text"]', 'text_fields = ["text", "label"]'), "also a text or context field"),
        (('metric = "f1_positive"', 'metric = "accuracy"'), "metric"),
        (('rationale = "The author refuses their own booster."', 'rationale = "' + "word " * 31 + '"'), "31 words"),
        (('corrected_label = "other"\n', ""), "needs corrected_label"),
        (('title = "Vaccine hesitancy"', 'title = "Vaccine hesitancy"\ncolour = "red"'), "colour: unknown key"),
        (('map = { "1" = "hesitant", "0" = "other" }',
          'bins = [{ label = "other", max = 5 }, { label = "hesitant", min = 5 }]'), "overlap"),
    ],
)
def test_invalid_definitions_give_one_readable_line(tmp_path, change, expected):
    old, new = change
    assert old in USER_TASK
    message = load_error(tmp_path, USER_TASK.replace(old, new, 1))
    assert "invalid task definition" in message and expected in message, message
