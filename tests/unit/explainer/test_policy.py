import pytest

from monitor.assessment import Robustness, allowed_mode, decide_mode, grant_key
from monitor.explainer.policy import Candidate, Policy, apply_verdict, escalation_reason, select_for_explanation

SIGNALS = ("severe_adr",)


def test_reasons():
    p = Policy(verify_signals=True)
    assert escalation_reason(Candidate("no_severe_adr", 0.4), p, threshold=0.6, signal_labels=SIGNALS) == "low_confidence"
    assert escalation_reason(Candidate("severe_adr", 0.99), p, threshold=0.6, signal_labels=SIGNALS) == "signal"
    assert escalation_reason(Candidate("no_severe_adr", 0.99), p, threshold=0.6, signal_labels=SIGNALS) is None
    off = Policy(below_threshold=False, verify_signals=False)
    assert escalation_reason(Candidate("severe_adr", 0.1), off, threshold=0.6, signal_labels=SIGNALS) is None


def test_selection_is_capped_and_least_confident_first():
    cands = [Candidate("no_severe_adr", c / 100) for c in range(100)]
    chosen = select_for_explanation(cands, Policy(max_share=0.05), threshold=0.5, signal_labels=SIGNALS)
    assert chosen == [0, 1, 2, 3, 4]
    assert select_for_explanation(cands, Policy(max_share=0.0), threshold=0.5, signal_labels=SIGNALS) == []
    # A single post can be explained even though 10% of one post rounds down to zero.
    assert select_for_explanation([Candidate("severe_adr", 0.1)], Policy(), threshold=0.5, signal_labels=SIGNALS) == [0]


@pytest.mark.parametrize(
    ("verdict", "corrected", "mode", "expected"),
    [
        ("reject", "severe_adr", "correct", ("severe_adr", "llm")),  # restores a missed signal
        ("reject", "severe_adr", "explain", ("no_severe_adr", "classifier")),
        ("confirm", None, "correct", ("no_severe_adr", "classifier")),
        ("unverified", None, "correct", ("no_severe_adr", "classifier")),
        ("over_budget", None, "correct", ("no_severe_adr", "classifier")),
    ],
)
def test_verdict_to_label(verdict, corrected, mode, expected):
    assert apply_verdict("no_severe_adr", verdict, corrected, mode) == expected


ROBUST = Robustness(attack_change_rate=0.05, self_disagreement_rate=0.10, cases=66)


def test_correct_mode_only_when_the_metric_holds_and_flips_beat_chance():
    assert decide_mode(0.60, 0.61, 3, flips_right=12, flips_wrong=2, robustness=ROBUST)[0] == "correct"
    assert decide_mode(0.60, 0.60, 3, flips_right=12, flips_wrong=2, robustness=ROBUST)[0] == "correct"
    assert decide_mode(0.60, 0.55, 3, flips_right=12, flips_wrong=2, robustness=ROBUST)[0] == "explain"
    # Measured with SmolLM2 on druglib: it rejected everything; 32 right vs 28 wrong is a coin toss.
    mode, why = decide_mode(0.6846, 0.6911, 61, flips_right=32, flips_wrong=28)
    assert mode == "explain" and "no better than chance" in why
    mode, why = decide_mode(0.60, 0.60, 0)
    assert mode == "explain" and "no verified reject" in why


def test_sign_test():
    from monitor.assessment import sign_test_p

    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == 1 / 32
    assert abs(sign_test_p(32, 28) - 0.3487) < 0.01


def test_policy_validation():
    with pytest.raises(ValueError):
        Policy(max_share=2)
    with pytest.raises(ValueError):
        Policy(mode="guess")  # type: ignore[arg-type]


def test_budget_refills_at_its_rate_and_caps_bursts():
    from monitor.explainer.policy import ExplanationBudget

    now = [0.0]
    budget = ExplanationBudget(2.0, burst=3, clock=lambda: now[0])
    assert [budget.try_take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert budget.try_take() and not budget.try_take()
    now[0] += 100  # never more than the burst
    assert sum(budget.try_take() for _ in range(10)) == 3
    with pytest.raises(ValueError):
        ExplanationBudget(0)


def test_budget_shared_by_threads_never_gives_more_than_it_holds():
    from concurrent.futures import ThreadPoolExecutor

    from monitor.explainer.policy import ExplanationBudget

    budget = ExplanationBudget(1.0, burst=50, clock=lambda: 0.0)  # a frozen clock: no refill
    with ThreadPoolExecutor(max_workers=8) as pool:
        taken = sum(pool.map(lambda _: sum(budget.try_take() for _ in range(100)), range(8)))
    assert taken == 50
    assert budget.available() == 0.0


def test_no_correct_mode_when_attacks_move_verdicts_more_than_benign_edits():
    """Everything else earns the grant; only the adversarial figures differ."""
    steered = Robustness(attack_change_rate=0.25, self_disagreement_rate=0.10, cases=66)
    mode, why = decide_mode(0.60, 0.65, 5, flips_right=12, flips_wrong=1, robustness=steered)
    assert mode == "explain" and "more than benign edits" in why
    even = Robustness(attack_change_rate=0.10, self_disagreement_rate=0.10, cases=66)
    assert decide_mode(0.60, 0.65, 5, flips_right=12, flips_wrong=1, robustness=even)[0] == "correct"
    # Not measured at all: no grant either.
    mode, why = decide_mode(0.60, 0.65, 5, flips_right=12, flips_wrong=1)
    assert mode == "explain" and "not run" in why


def _record(folder, entries):
    import json

    (folder / "explainer_policy.json").write_text(json.dumps(entries))


def test_a_grant_holds_only_under_the_escalation_policy_it_was_measured_under(tmp_path):
    measured = Policy(mode="correct", below_threshold=True, verify_signals=False, max_share=0.1)
    _record(tmp_path, {grant_key("llm.gguf", "p1", measured): {"mode": "correct", "why": "measured"}})
    # The same escalation (mode and the evaluation cap do not matter to which posts a stream escalates).
    assert allowed_mode(tmp_path, "llm.gguf", "p1", Policy(mode="explain", max_share=0.5)) == ("correct", "measured")
    for other in (Policy(verify_signals=True), Policy(threshold=0.7), Policy(below_threshold=False)):
        mode, why = allowed_mode(tmp_path, "llm.gguf", "p1", other)
        assert mode == "explain" and "another escalation policy" in why, other
    assert allowed_mode(tmp_path, "llm.gguf", "p2", measured)[0] == "explain"
    assert allowed_mode(tmp_path, "other.gguf", "p1", measured)[0] == "explain"


def test_a_grant_recorded_before_policies_were_keyed_is_not_trusted(tmp_path):
    _record(tmp_path, {"llm.gguf|p1": {"mode": "correct", "why": "old"}})
    mode, why = allowed_mode(tmp_path, "llm.gguf", "p1", Policy())
    assert mode == "explain" and "an unrecorded policy" in why
    assert allowed_mode(tmp_path / "nowhere", "llm.gguf", "p1", Policy())[0] == "explain"
