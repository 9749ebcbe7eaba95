"""Is a rationale grounded in its post? Flags the drugs, symptoms/conditions and numbers it names that
the post never said. Pure: standard library only, deterministic.

A rationale that names a drug, a symptom or a dose the post does not contain is not grounded, however
plausible it reads; small LLMs invent exactly these ("the rash after starting Zoloft" of a post that
never named Zoloft). The check is deliberately lexical: cheap enough for every explanation, explainable
(it returns the terms), and tested. What it looks for in the rationale:

- numbers: digit runs with an optional decimal part and thousands commas ("20", "3.5", "1,000"); a
  unit glued on or spaced off ("20mg", "20 mg", "2x", "10%") is ignored, so "20" anywhere in the post
  supports "20 mg", while "200" does not support "20". A number right after "line"/"lines" refers to
  the numbered post the model was shown, not to a claim, and is skipped.
- drugs: ``DRUGS`` (generic and brand names common in drug reviews and pharmacovigilance posts) and
  any word of at least ``MIN_SUFFIX_WORD`` letters ending in a generic-name stem (``DRUG_SUFFIXES``,
  e.g. -statin, -profen), unless it is an ordinary word on ``SUFFIX_STOPWORDS``.
- symptoms and conditions: ``SYMPTOM_VARIANTS``, canonical term to the other spellings and word forms
  that mean the same (diarrhoea, nauseous, dizzy, itchy). Multi-word terms are matched before their
  words, so "panic attack" is one term.

Matching: NFKC, casefold, word boundaries; a word becomes its singular when that singular is a
vocabulary word or a drug-shaped word (headaches -> headache, rashes -> rash, allergies -> allergy),
then a term's words map to its canonical term the same way in rationale and post. A term is present
if the post, or one of the ``allowed`` texts (the task's label names and title words, underscores read
as spaces), contains it anywhere, on its own or inside a longer term ("anxiety" is in "social anxiety").

Returned terms are lowercase canonical: the vocabulary's canonical term ("diarrhea" for "diarrhoea",
"panic attack" for "panic attacks"), the singular of a drug-shaped word, a number without separators
or trailing decimal zeros ("3.5" for "3.50").

Known blind spots, on purpose: paraphrase ("tired" does not support "fatigue", "gained weight" does
not support "weight gain", a brand does not support its generic), number words ("twenty" is neither
looked for nor read as 20), misspellings (an unlisted spelling is a different word), negation (a
rationale that names a term only to deny it, "no rash", is still flagged when the post never named
it), and anything outside the vocabularies (a claim about a body part, a person, a time) is not
checked at all.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

#: Generic and brand names seen in drug reviews and pharmacovigilance posts, lowercase.
DRUGS: frozenset[str] = frozenset({
    # pain, migraine, neuropathic pain
    "ibuprofen", "advil", "motrin", "acetaminophen", "paracetamol", "tylenol", "naproxen", "aleve",
    "aspirin", "excedrin", "diclofenac", "voltaren", "celecoxib", "celebrex", "meloxicam", "mobic",
    "tramadol", "ultram", "oxycodone", "oxycontin", "percocet", "hydrocodone", "vicodin", "norco",
    "codeine", "morphine", "fentanyl", "methadone", "suboxone", "buprenorphine", "naloxone", "narcan",
    "naltrexone", "gabapentin", "neurontin", "pregabalin", "lyrica", "sumatriptan", "imitrex",
    "rizatriptan", "maxalt", "topiramate", "topamax", "lidocaine",
    # antidepressants
    "sertraline", "zoloft", "fluoxetine", "prozac", "escitalopram", "lexapro", "citalopram", "celexa",
    "paroxetine", "paxil", "venlafaxine", "effexor", "desvenlafaxine", "pristiq", "duloxetine",
    "cymbalta", "bupropion", "wellbutrin", "mirtazapine", "remeron", "trazodone", "amitriptyline",
    "elavil", "nortriptyline", "vortioxetine", "trintellix", "vilazodone", "viibryd", "esketamine",
    "spravato", "ketamine",
    # anxiety and sleep
    "alprazolam", "xanax", "lorazepam", "ativan", "clonazepam", "klonopin", "diazepam", "valium",
    "zolpidem", "ambien", "eszopiclone", "lunesta", "temazepam", "hydroxyzine", "atarax", "buspirone",
    "buspar", "melatonin", "diphenhydramine", "benadryl",
    # antipsychotics and mood stabilisers
    "quetiapine", "seroquel", "aripiprazole", "abilify", "olanzapine", "zyprexa", "risperidone",
    "risperdal", "lurasidone", "latuda", "lithium", "lamotrigine", "lamictal", "depakote",
    "valproate", "carbamazepine", "tegretol", "levetiracetam", "keppra",
    # ADHD and wakefulness
    "methylphenidate", "ritalin", "concerta", "adderall", "amphetamine", "vyvanse", "lisdexamfetamine",
    "atomoxetine", "strattera", "modafinil", "provigil",
    # heart and blood
    "lisinopril", "enalapril", "ramipril", "losartan", "valsartan", "amlodipine", "norvasc",
    "metoprolol", "atenolol", "propranolol", "carvedilol", "hydrochlorothiazide", "furosemide",
    "lasix", "spironolactone", "atorvastatin", "lipitor", "simvastatin", "zocor", "rosuvastatin",
    "crestor", "pravastatin", "warfarin", "coumadin", "apixaban", "eliquis", "rivaroxaban", "xarelto",
    "clopidogrel", "plavix", "digoxin",
    # diabetes and weight
    "metformin", "glucophage", "insulin", "lantus", "humalog", "glipizide", "sitagliptin", "januvia",
    "empagliflozin", "jardiance", "semaglutide", "ozempic", "wegovy", "liraglutide", "victoza",
    "dulaglutide", "trulicity", "tirzepatide", "mounjaro",
    # stomach
    "omeprazole", "prilosec", "esomeprazole", "nexium", "pantoprazole", "lansoprazole", "ranitidine",
    "zantac", "famotidine", "pepcid", "ondansetron", "zofran", "loperamide", "imodium",
    "metoclopramide",
    # antibiotics and antivirals
    "amoxicillin", "augmentin", "penicillin", "azithromycin", "zithromax", "doxycycline",
    "minocycline", "ciprofloxacin", "cipro", "levofloxacin", "levaquin", "cephalexin", "keflex",
    "clindamycin", "metronidazole", "flagyl", "bactrim", "nitrofurantoin", "macrobid", "acyclovir",
    "valacyclovir", "valtrex", "oseltamivir", "tamiflu", "paxlovid", "remdesivir",
    # steroids, immunology, rheumatology
    "prednisone", "prednisolone", "methylprednisolone", "medrol", "dexamethasone", "hydrocortisone",
    "humira", "adalimumab", "enbrel", "etanercept", "remicade", "infliximab", "methotrexate",
    "hydroxychloroquine", "plaquenil", "dupixent",
    # skin and hair
    "accutane", "isotretinoin", "tretinoin", "differin", "minoxidil", "finasteride", "propecia",
    # allergy and breathing
    "cetirizine", "zyrtec", "loratadine", "claritin", "fexofenadine", "allegra", "montelukast",
    "singulair", "albuterol", "ventolin", "fluticasone", "flonase", "advair", "symbicort",
    # hormones, contraception, other
    "levothyroxine", "synthroid", "estradiol", "progesterone", "testosterone", "yaz", "yasmin",
    "mirena", "nexplanon", "sildenafil", "viagra", "tadalafil", "cialis", "tamsulosin", "flomax",
    "alendronate", "fosamax", "varenicline", "chantix",
})

#: Stems that end generic names (INN stems and their common endings), for drugs not in ``DRUGS``.
DRUG_SUFFIXES: tuple[str, ...] = (
    "pril", "sartan", "olol", "statin", "mab", "nib", "azole", "cillin", "mycin", "micin", "floxacin",
    "oxacin", "cycline", "azepam", "zepam", "azolam", "oxetine", "faxine", "triptyline", "prazole",
    "tidine", "dipine", "gliptin", "gliflozin", "glutide", "vir", "profen", "fenac", "caine", "sone",
    "lone", "done", "sterone", "apine", "azine", "amine", "afil", "triptan", "setron", "lukast",
    "parin", "dronate", "semide", "gabalin",
)
#: Shorter words are never taken for a drug by their ending ("alone", "done", "tone").
MIN_SUFFIX_WORD = 6
#: Ordinary English words (and names) of at least MIN_SUFFIX_WORD letters that end in a drug stem.
SUFFIX_STOPWORDS: frozenset[str] = frozenset({
    "cyclone", "standalone", "abalone", "malone", "stallone", "undone", "redone", "outdone", "overdone",
    "underdone", "condone", "examine", "reexamine", "famine", "magazine",
    # end in "one" but in no stem; listed so a future stem such as "-one" cannot silently flag them
    "someone", "everyone", "anyone", "stone", "phone", "alone", "none", "done", "gone", "tone", "hole",
})

#: Canonical symptom or condition -> other spellings and word forms that mean the same thing.
#: Plurals need no entry (see the module docstring); "tired" is deliberately not fatigue.
SYMPTOM_VARIANTS: dict[str, tuple[str, ...]] = {
    # stomach and gut
    "nausea": ("nauseous", "nauseated", "nauseating"),
    "vomiting": ("vomit", "vomited", "throwing up", "threw up", "puking", "puke", "puked"),
    "diarrhea": ("diarrhoea",),
    "constipation": ("constipated",),
    "stomach pain": ("stomach ache", "stomachache", "tummy ache"),
    "abdominal pain": (),
    "bloating": ("bloated",),
    "heartburn": (),
    "acid reflux": ("reflux",),
    "indigestion": (),
    "cramp": ("cramping",),
    "loss of appetite": ("appetite loss",),
    "increased appetite": (),
    "dry mouth": ("cottonmouth",),
    "metallic taste": (),
    # head, nerves, sleep
    "headache": ("head ache",),
    "migraine": (),
    "dizziness": ("dizzy",),
    "vertigo": (),
    "lightheadedness": ("lightheaded", "light headed"),
    "fainting": ("fainted", "passed out"),
    "insomnia": ("sleeplessness",),
    "drowsiness": ("drowsy", "sleepiness", "sleepy"),
    "fatigue": ("fatigued",),
    "lethargy": ("lethargic",),
    "exhaustion": ("exhausted",),
    "brain fog": (),
    "memory loss": (),
    "confusion": (),
    "numbness": ("numb",),
    "tingling": (),
    "tremor": (),
    "twitching": (),
    "muscle spasm": (),
    "seizure": ("convulsion",),
    "restless legs": ("restless leg",),
    "akathisia": (),
    "brain zap": (),
    "tinnitus": ("ringing in the ears", "ringing in my ears"),
    "blurred vision": ("blurry vision",),
    "double vision": (),
    "dry eye": (),
    "yawning": (),
    "teeth grinding": ("bruxism", "jaw clenching"),
    "nightmare": (),
    "vivid dream": (),
    # skin and hair
    "rash": (),
    "hives": ("urticaria",),
    "itching": ("itch", "itchy", "itchiness"),
    "acne": (),
    "dry skin": (),
    "peeling": (),
    "sunburn": (),
    "photosensitivity": (),
    "bruising": ("bruise", "bruised"),
    "hair loss": (),
    "hair thinning": ("thinning hair",),
    "sweating": ("sweat", "sweaty"),
    "night sweat": (),
    "hot flash": ("hot flush",),
    "swelling": ("swollen",),
    "edema": ("oedema",),
    # heart, blood, breathing
    "chest pain": (),
    "palpitation": ("heart palpitation",),
    "tachycardia": ("racing heart",),
    "arrhythmia": ("irregular heartbeat",),
    "high blood pressure": (),
    "hypertension": (),
    "low blood pressure": (),
    "hypotension": (),
    "heart attack": (),
    "stroke": (),
    "blood clot": (),
    "pulmonary embolism": (),
    "deep vein thrombosis": ("dvt",),
    "bleeding": (),
    "nosebleed": ("nose bleed",),
    "shortness of breath": ("short of breath", "breathlessness"),
    "cough": ("coughing",),
    "sore throat": (),
    "runny nose": (),
    "congestion": ("congested",),
    "fever": ("feverish",),
    "chills": (),
    "loss of taste": (),
    "loss of smell": (),
    # muscles, joints, general
    "pain": (),
    "muscle pain": ("myalgia",),
    "joint pain": ("arthralgia",),
    "back pain": (),
    "muscle weakness": (),
    "weight gain": (),
    "weight loss": (),
    "dehydration": ("dehydrated",),
    "allergic reaction": (),
    "allergy": (),
    "anaphylaxis": ("anaphylactic",),
    "serotonin syndrome": (),
    "withdrawal": (),
    "overdose": (),
    "addiction": ("addicted",),
    # sex, urine, periods
    "sexual dysfunction": (),
    "erectile dysfunction": ("impotence",),
    "low libido": ("loss of libido", "decreased libido"),
    "frequent urination": (),
    "incontinence": (),
    "irregular period": (),
    "spotting": (),
    # mood and mind
    "anxiety": ("anxious",),
    "depression": ("depressed",),
    "panic attack": (),
    "suicidal thought": ("thoughts of suicide",),
    "suicidal ideation": (),
    "suicide": (),
    "self harm": ("self injury",),
    "irritability": ("irritable",),
    "agitation": ("agitated",),
    "aggression": (),
    "mood swing": (),
    "apathy": (),
    "emotional numbness": (),
    "paranoia": ("paranoid",),
    "hallucination": (),
    "psychosis": ("psychotic",),
    "mania": ("manic",),
    # diagnoses
    "social anxiety": ("social anxiety disorder",),
    "ptsd": (),
    "ocd": (),
    "adhd": (),
    "bipolar disorder": ("bipolar",),
    "schizophrenia": (),
    "eating disorder": (),
    "anorexia": (),
    "bulimia": (),
    "covid": ("coronavirus", "covid19"),
    "flu": ("influenza",),
    "pneumonia": (),
    "infection": (),
    "yeast infection": (),
    "urinary tract infection": ("uti",),
    "diabetes": (),
    "high cholesterol": (),
    "asthma": (),
    "cancer": (),
    "arthritis": (),
    "psoriasis": (),
    "eczema": (),
    "fibromyalgia": (),
    "lupus": (),
    "crohn's disease": ("crohn's",),
    "irritable bowel syndrome": ("ibs",),
    "gerd": (),
    "epilepsy": (),
    "neuropathy": (),
    "sleep apnea": ("sleep apnoea",),
    "pancreatitis": (),
    "hepatitis": (),
    "jaundice": (),
    "liver damage": (),
}
#: The canonical symptoms and conditions.
SYMPTOMS: frozenset[str] = frozenset(SYMPTOM_VARIANTS)

# Numbers first, so "20mg" is the number 20 and the word "mg"; words are letters only (no digits,
# no underscore, so a label such as "social_anxiety" reads as two words).
_TOKEN = re.compile(r"(?P<number>[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?)|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)*)")
_LINE_WORDS = frozenset({"line", "lines"})

Token = tuple[str, str]  # (kind, key): kind is "number" or "word"


def _normalise(text: str) -> str:
    """NFKC and casefold, with typographic apostrophes made plain so "Crohn’s" is "crohn's"."""
    return unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'").replace("\u2018", "'")


def _raw_words(text: str) -> list[str]:
    return [m["word"].removesuffix("'s") for m in _TOKEN.finditer(_normalise(text)) if m["word"]]


def _looks_like_drug(word: str) -> bool:
    """A generic-name stem on a long enough, non-ordinary word: catches drugs the vocabulary lacks."""
    return (len(word) >= MIN_SUFFIX_WORD and word.isalpha() and word not in SUFFIX_STOPWORDS
            and word.endswith(DRUG_SUFFIXES))


_SURFACES: dict[str, str] = {name: name for name in DRUGS} | {
    surface: canonical for canonical, variants in SYMPTOM_VARIANTS.items() for surface in (canonical, *variants)}
#: Every word of every vocabulary surface: the singulars a plural may be reduced to.
_KNOWN_WORDS: frozenset[str] = frozenset(word for surface in _SURFACES for word in _raw_words(surface))


def _word_key(word: str) -> str:
    """The word's singular when that is a vocabulary word or drug-shaped, else the word itself.

    Only plurals that reduce to a known or drug-shaped word are touched, so ordinary words ("loss",
    "diabetes", "hives") stay as written in rationale and post alike.
    """
    if len(word) >= 4 and word.endswith("s") and not word.endswith("ss"):
        candidates = [word[:-1], word[:-2] if word.endswith("es") else "",
                      word[:-3] + "y" if word.endswith("ies") else ""]
        for candidate in candidates:
            if candidate and (candidate in _KNOWN_WORDS or _looks_like_drug(candidate)):
                return candidate
    return word


def _number_key(digits: str) -> str:
    """One spelling per number: "1,000" is "1000", "3.50" is "3.5", "20.0" is "20", "05" is "5"."""
    whole, _, fraction = digits.replace(",", "").partition(".")
    fraction = fraction.rstrip("0")
    return (whole.lstrip("0") or "0") + (f".{fraction}" if fraction else "")


def _tokens(text: str) -> list[Token]:
    tokens: list[Token] = []
    for match in _TOKEN.finditer(_normalise(text)):
        if match["number"]:
            tokens.append(("number", _number_key(match["number"])))
        else:
            tokens.append(("word", _word_key(match["word"].removesuffix("'s"))))
    return tokens


#: Surface word keys -> canonical term; built with the same word keys the texts get.
_PHRASES: dict[tuple[str, ...], str] = {
    tuple(_word_key(word) for word in _raw_words(surface)): canonical for surface, canonical in _SURFACES.items()}
_LONGEST_PHRASE = max(len(phrase) for phrase in _PHRASES)


def _phrase_at(tokens: list[Token], start: int, length: int) -> str | None:
    window = tokens[start:start + length]
    if len(window) < length or any(kind != "word" for kind, _ in window):
        return None
    return _PHRASES.get(tuple(key for _, key in window))


def _claimed_terms(tokens: list[Token]) -> list[str]:
    """The rationale's terms in order, longest vocabulary match first at each position."""
    terms: list[str] = []
    i = 0
    while i < len(tokens):
        kind, key = tokens[i]
        if kind == "number":
            if not (i > 0 and tokens[i - 1][0] == "word" and tokens[i - 1][1] in _LINE_WORDS):
                terms.append(key)
            i += 1
            continue
        for length in range(_LONGEST_PHRASE, 0, -1):
            term = _phrase_at(tokens, i, length)
            if term is not None:
                terms.append(term)
                i += length
                break
        else:
            if _looks_like_drug(key):
                terms.append(key)
            i += 1
    return terms


def _present_terms(tokens: list[Token]) -> set[str]:
    """Everything a text can support: its word and number keys and every vocabulary term anywhere in
    it, including those inside a longer term (post "social anxiety" supports rationale "anxiety")."""
    present = {key for _, key in tokens}
    for start in range(len(tokens)):
        for length in range(1, _LONGEST_PHRASE + 1):
            term = _phrase_at(tokens, start, length)
            if term is not None:
                present.add(term)
    return present


@dataclass(frozen=True)
class SupportCheck:
    """The rationale's drugs, symptoms/conditions and numbers that neither the post nor the task names."""

    unsupported: tuple[str, ...]  # lowercase canonical, distinct, in order of first appearance

    @property
    def supported(self) -> bool:
        return not self.unsupported


def check_rationale(rationale: str, post: str, *, allowed: Iterable[str] = ()) -> SupportCheck:
    """Which terms the rationale names that the post does not contain (see the module docstring).

    ``allowed`` are texts the task itself names (label names such as "social_anxiety", title words):
    a rationale that names them describes the label, not the post, so they are never flagged. Empty
    texts are fine; an empty rationale claims nothing and is supported.
    """
    present = _present_terms(_tokens(post))
    for text in allowed:
        present |= _present_terms(_tokens(text.replace("_", " ")))
    claimed = dict.fromkeys(_claimed_terms(_tokens(rationale)))
    return SupportCheck(tuple(term for term in claimed if term not in present))


#: A reason is a restatement when at least ``RESTATES_SHARE`` of its words lie in runs of at least
#: ``COPY_RUN`` consecutive words that the post has in the same order: it tells the reader nothing the
#: evidence line did not (small LLMs often answer "why" by quoting the post back).
COPY_RUN = 3
RESTATES_SHARE = 0.7


def _sequence(text: str) -> list[str]:
    """Words and numbers in order (NFKC, casefold, possessive 's dropped); punctuation ignored."""
    return [m["number"] or m["word"].removesuffix("'s") for m in _TOKEN.finditer(_normalise(text))]


def copied_share(rationale: str, post: str) -> float:
    """The share of the rationale's words (and numbers) inside a run of at least ``COPY_RUN`` of them
    that the post also has, consecutively and in the same order; 0.0 for a rationale without words.
    A rationale shorter than ``COPY_RUN`` words can only be copied whole."""
    said, source = _sequence(rationale), _sequence(post)
    if not said:
        return 0.0
    run = min(COPY_RUN, len(said))
    grams = {tuple(source[i:i + run]) for i in range(len(source) - run + 1)}
    covered = [False] * len(said)
    for i in range(len(said) - run + 1):
        if tuple(said[i:i + run]) in grams:
            covered[i:i + run] = [True] * run
    return sum(covered) / len(said)


def restates_post(rationale: str, post: str) -> bool:
    """Whether the rationale is mostly the post's own words (``copied_share`` >= ``RESTATES_SHARE``)."""
    return copied_share(rationale, post) >= RESTATES_SHARE
