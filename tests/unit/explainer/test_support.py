import subprocess
import sys

import pytest

from monitor.explainer.support import (
    DRUG_SUFFIXES,
    DRUGS,
    MIN_SUFFIX_WORD,
    SUFFIX_STOPWORDS,
    SYMPTOMS,
    SupportCheck,
    check_rationale,
)

SOCIAL_ANXIETY = ("other", "social_anxiety", "Social-anxiety self-disclosure (Reddit, stand-in for SMM4H task 4)")
COVID = ("other", "self_report", "Self-reported COVID-19 diagnosis (tweets)")


def test_a_drug_the_post_never_named_is_flagged_in_lowercase():
    check = check_rationale("The rash after starting Zoloft is an adverse reaction.",
                            "The drug gave me a rash, had to stop after a week.")
    assert check == SupportCheck(unsupported=("zoloft",))
    assert not check.supported
    assert check_rationale("The rash after starting Zoloft is an adverse reaction.",
                           "zoloft gave me a rash").supported


@pytest.mark.parametrize("post", ["I take 20mg every day", "20 mg a day", "dose: 20", "took 20.0 mg",
                                  "I take twenty, no wait, 20 mg"])
def test_a_number_is_supported_by_the_same_number_with_any_unit(post):
    assert check_rationale("They took 20 mg daily.", post).supported


@pytest.mark.parametrize(("rationale", "post", "expected"), [
    ("They took 20 mg daily.", "I take 200mg", ("20",)),
    ("They took 200 mg daily.", "I take 20mg", ("200",)),
    ("A 2.5 mg dose.", "25 mg", ("2.5",)),
    ("Twice daily, 2x.", "once a day", ("2",)),
    ("A 10% rise.", "went up 100%", ("10",)),
    ("It lasted 3.50 days.", "3.5 days of hell", ()),
    ("Over 1,000 mg.", "1000 mg total", ()),
])
def test_numbers_must_match_as_whole_numbers(rationale, post, expected):
    assert check_rationale(rationale, post).unsupported == expected


def test_a_line_reference_is_not_a_claimed_number():
    assert check_rationale("Line 3 says the dose was 5 mg.", "Took 5 mg.").supported
    assert check_rationale("Line 3 says the dose was 5 mg.", "Took 50 mg.").unsupported == ("5",)


def test_a_symptom_the_post_never_named_is_flagged():
    assert check_rationale("The headache is a side effect.", "Lexapro makes me sleepy.").unsupported == ("headache",)


@pytest.mark.parametrize(("rationale_term", "post_term"), [
    ("diarrhoea", "diarrhea"), ("diarrhea", "diarrhoea"), ("nausea", "nauseous"), ("nauseous", "nausea"),
    ("dizziness", "dizzy"), ("itching", "itchy"), ("itching", "itches"), ("headaches", "headache"),
    ("headache", "headaches"), ("rash", "rashes"), ("allergy", "allergies"), ("depression", "depressed"),
    ("Panic attack", "panic attacks"), ("blurred vision", "blurry vision"), ("edema", "oedema"),
])
def test_a_symptom_is_supported_by_its_plural_or_listed_variant(rationale_term, post_term):
    assert check_rationale(f"The post reports {rationale_term} on this drug.",
                           f"This drug gave me {post_term}.").supported


def test_tired_is_not_fatigue():
    assert check_rationale("Fatigue is the side effect.", "It made me so tired.").unsupported == ("fatigue",)


def test_multi_word_terms_are_one_term_matched_before_their_words():
    assert check_rationale("They had a panic attack.", "My heart raced.").unsupported == ("panic attack",)
    assert check_rationale("Weight gain on it.", "Some gain, no weight issue.").unsupported == ("weight gain",)
    assert check_rationale("Weight loss on it.", "I lost weight.").unsupported == ("weight loss",)
    # the longer term wins even when one of its words is a term the post has
    assert check_rationale("Chest pain after the dose.", "back pain after the dose").unsupported == ("chest pain",)
    assert check_rationale("Social anxiety, clearly.", "my anxiety is bad").unsupported == ("social anxiety",)
    # ...and when its first word alone is a term ("irritable" is irritability)
    assert check_rationale("Irritable bowel syndrome flared.", "I'm irritable today").unsupported == (
        "irritable bowel syndrome",)
    assert check_rationale("Gained weight.", "weight gain").supported  # no term claimed: paraphrase unchecked
    # a shorter term inside a longer one in the post is supported
    assert check_rationale("The anxiety is clear.", "diagnosed with social anxiety").supported
    assert check_rationale("Crohn's disease is calm.", "my Crohn\u2019s is calm").supported


@pytest.mark.parametrize("word", ["fakeprofen", "zorbastatin", "blorbazepam", "quixomab", "florbacillin",
                                  "zentrapril", "wobblesartan"])
def test_a_drug_shaped_word_outside_the_vocabulary_is_flagged(word):
    assert word not in DRUGS
    assert check_rationale(f"The {word.title()} caused it.", "A new pill caused it.").unsupported == (word,)
    assert check_rationale(f"The {word}s caused it.", f"{word} caused it.").supported


@pytest.mark.parametrize("word", ["hole", "tone", "alone", "stone", "phone", "someone", "everyone", "none",
                                  "done", "gone", "undone", "condone", "overdone", "magazine", "examine",
                                  "cyclone", "standalone"])
def test_ordinary_words_with_drug_endings_are_not_flagged(word):
    assert check_rationale(f"The {word} was mentioned by {word}s.", "Nothing relevant here.").supported


def test_the_stop_list_is_what_keeps_its_long_words_out():
    needed = {w for w in SUFFIX_STOPWORDS if len(w) >= MIN_SUFFIX_WORD and w.endswith(DRUG_SUFFIXES)}
    assert {"undone", "condone", "magazine", "examine", "cyclone", "standalone"} <= needed


def test_terms_the_task_names_are_allowed():
    rationale = "The poster discloses social anxiety at parties."
    post = "I leave parties after 10 minutes, I can't talk to anyone."
    assert check_rationale(rationale, post).unsupported == ("social anxiety",)
    assert check_rationale(rationale, post, allowed=SOCIAL_ANXIETY).supported
    assert check_rationale(rationale, post, allowed=["social_anxiety"]).supported
    # allowed does not wash out everything: a drug is still flagged
    assert check_rationale("Social anxiety eased on Paxil.", post, allowed=SOCIAL_ANXIETY).unsupported == ("paxil",)


def test_case_and_unicode_are_normalised():
    assert check_rationale("ZOLOFT at \uff12\uff10 mg.", "zoloft 20mg").supported
    assert check_rationale("Zoloft.", "\uff3aoloft helped").supported


def test_terms_come_back_distinct_in_order_of_first_appearance():
    check = check_rationale("Zoloft caused nausea; Zoloft at 5 mg, then nausea and Zoloft again.", "meh")
    assert check.unsupported == ("zoloft", "nausea", "5")


def test_empty_texts_do_not_raise():
    assert check_rationale("", "").supported
    assert check_rationale("", "Zoloft 20 mg").supported
    assert check_rationale("Zoloft at 20 mg.", "").unsupported == ("zoloft", "20")
    assert check_rationale("   ", "x", allowed=[""]).supported


GROUNDED = [
    ("Day 3 on sertraline. The nausea is awful; I can't keep food down!",
     "The post reports nausea on day 3 of sertraline, a side effect.", ()),
    ("Started Lexapro 10mg last month, the dizziness and dry mouth are finally fading.",
     "Dizziness and dry mouth after starting 10 mg of Lexapro are reported adverse effects.", ()),
    ("My doctor upped my Wellbutrin to 300 mg and now I get headaches every afternoon.",
     "A headache after the Wellbutrin dose went up to 300 mg is a side effect.", ()),
    ("Accutane cleared my skin but my lips are so dry and I got nosebleeds twice.",
     "The nosebleeds on Accutane are an adverse reaction.", ()),
    ("I've been so anxious at parties that I leave after 10 minutes, can't talk to anyone.",
     "The poster describes social anxiety, leaving parties after 10 minutes.", SOCIAL_ANXIETY),
    ("tested positive this morning, fever and chills all night",
     "The user reports their own positive COVID-19 test with fever.", COVID),
    ("Humira injections every 2 weeks, the injection site itches for a day but my Crohn\u2019s is calm.",
     "Itching at the Humira injection site is mild, and the Crohn's disease is controlled.", ()),
    ("Xanax 0.5 helps with my panic attacks but I'm drowsy all day.",
     "Drowsiness from 0.50 mg Xanax taken for panic attacks is a side effect.", ()),
    ("Metformin gave me diarrhoea for the first 2 weeks, now fine.",
     "The diarrhea on metformin lasted 2 weeks and resolved.", ()),
    ("Ibuprofen works for my back pain, no side effects at all.",
     "Line 1 says ibuprofen relieved the back pain without side effects.", ()),
    ("Effexor withdrawal was brutal: brain zaps, vertigo, crying spells.",
     "Brain zaps and vertigo during Effexor withdrawal are severe adverse effects.", ()),
]

HALLUCINATED = [
    ("The drug gave me a rash.", "The rash after starting Zoloft is an adverse reaction.", (), ("zoloft",)),
    ("Started Lexapro last month and I feel dizzy.", "Dizziness and weight gain on Lexapro are side effects.",
     (), ("weight gain",)),
    ("I take 200mg of sertraline.", "Taking 20 mg of sertraline is a normal dose.", (), ("20",)),
    ("Accutane dried out my lips.", "Accutane caused hair loss and dry lips.", (), ("hair loss",)),
    ("My anxiety is worse on this new pill.", "Anxiety worsened after starting fluoxetine 40 mg.", (),
     ("fluoxetine", "40")),
    ("Headaches every day since the new blood pressure pill.",
     "Headaches from lisinopril are a known adverse effect.", (), ("lisinopril",)),
    ("Tested positive today, fever all night.", "Fever and loss of smell point to a COVID diagnosis.", COVID,
     ("loss of smell",)),
    ("This med made me so tired I slept through work.", "Fatigue is a common side effect of the medication.",
     (), ("fatigue",)),
    ("Switched to a new cholesterol pill and my legs cramp at night.",
     "Leg cramps at night from zorbastatin are an adverse reaction.", (), ("zorbastatin",)),
    ("Feeling low since the dose change, crying a lot.",
     "Depression and suicidal thoughts followed the change to 3.5 mg.", (),
     ("depression", "suicidal thought", "3.5")),
    ("I had a panic attack on the bus.", "The poster had a seizure on the bus during Xanax withdrawal.", (),
     ("seizure", "xanax", "withdrawal")),
]


@pytest.mark.parametrize(("post", "rationale", "allowed"), GROUNDED)
def test_grounded_rationales_raise_no_false_alarm(post, rationale, allowed):
    assert check_rationale(rationale, post, allowed=allowed).unsupported == ()


@pytest.mark.parametrize(("post", "rationale", "allowed", "expected"), HALLUCINATED)
def test_hallucinated_rationales_are_each_flagged(post, rationale, allowed, expected):
    assert check_rationale(rationale, post, allowed=allowed).unsupported == expected


def test_vocabularies_are_lowercase_and_of_the_promised_size():
    assert len(DRUGS) >= 200 and len(SYMPTOMS) >= 150
    assert all(term == term.casefold() for term in DRUGS | SYMPTOMS)
    assert not DRUGS & SYMPTOMS


def test_the_module_is_pure_standard_library():
    code = ("import sys, monitor.explainer.support; "
            "print(sorted({'numpy', 'torch', 'sqlalchemy'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- reasons that restate the post ---------------------------------------------------------------

def test_a_reason_copied_from_the_post_is_a_restatement():
    from monitor.explainer.support import copied_share, restates_post

    post = "Lisinopril gave me a dry cough that kept me up every night, switched after two months."
    assert copied_share("Lisinopril gave me a dry cough that kept me up every night, switched after two months.",
                        post) == 1.0
    # Case, punctuation and typographic apostrophes do not hide a copy.
    assert restates_post("LISINOPRIL gave me a dry cough -- that kept me up every night!", post)
    # Stitched from two places of the post, each run of three words or more: still the post's words.
    long_post = "Three weeks on sertraline and honestly I feel more like myself again, no side effects."
    assert copied_share("Three weeks on sertraline and no side effects.", long_post) == 1.0


def test_a_reason_in_its_own_words_is_not_a_restatement():
    from monitor.explainer.support import copied_share, restates_post

    post = "Lisinopril gave me a dry cough that kept me up every night, switched after two months."
    reason = "The cough from lisinopril was bad enough that the reviewer changed drugs."
    assert copied_share(reason, post) == 0.0  # the shared words never run three in a row
    assert not restates_post(reason, post)
    # A quoted phrase inside a real reason: copied in part, below the share.
    quoted = "A cough that kept me up every night is a side effect serious enough to switch drugs."
    share = copied_share(quoted, post)
    assert 0.3 < share < 0.7 and not restates_post(quoted, post)


def test_copied_share_edges():
    from monitor.explainer.support import copied_share

    assert copied_share("", "anything at all") == 0.0
    assert copied_share("...", "anything at all") == 0.0
    assert copied_share("dry cough", "a dry cough at night") == 1.0  # shorter than a run: copied whole
    assert copied_share("dry night", "a dry cough at night") == 0.0
    assert copied_share("took 20 mg daily", "I took 20 mg daily for a week") == 1.0  # numbers are words here
    assert copied_share("took 200 mg daily", "I took 20 mg daily for a week") == 0.0
