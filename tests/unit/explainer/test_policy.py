import pytest

from monitor.assessment import decide_mode
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


def test_correct_mode_only_when_the_metric_holds_and_flips_beat_chance():
    assert decide_mode(0.60, 0.61, 3, flips_right=12, flips_wrong=2)[0] == "correct"
    assert decide_mode(0.60, 0.60, 3, flips_right=12, flips_wrong=2)[0] == "correct"
    assert decide_mode(0.60, 0.55, 3, flips_right=12, flips_wrong=2)[0] == "explain"
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
