"""What the people in the recorded streams write: health-flavoured templates in five languages, the odd
texts (emoji, right-to-left, NUL, HTML-hostile), and how a seeded generator fills them.
"""

from __future__ import annotations

import random
import re

#: Above this many characters a post is oversized (the recordings hold exactly one such post).
OVERSIZED_CHARS = 40_000
#: A hashtag as the recordings write one; platforms link and facet exactly these.
HASHTAG = re.compile(r"#([A-Za-z][A-Za-z0-9_]*)")

_EN = {
    "drug": ["ibuprofen", "sertraline", "metformin", "amoxicillin", "paracetamol", "Ozempic", "lisinopril",
             "prednisone", "melatonin", "escitalopram", "Adderall", "gabapentin", "levothyroxine", "Paxlovid"],
    "effect": ["nausea", "headaches", "dizziness", "insomnia", "itching", "brain fog", "heart palpitations",
               "fatigue", "dry mouth", "weird dreams", "joint pain", "hair loss"],
    "vaccine": ["flu shot", "covid booster", "RSV vaccine", "shingles vaccine", "MMR booster", "tetanus shot"],
    "coping": ["running", "journaling", "my therapist", "long walks", "box breathing", "my cat"],
    "days": ["2", "3", "4", "5", "6", "9", "12", "14"],
}
SLOTS: dict[str, dict[str, list[str]]] = {
    "en": _EN,
    "de": {"drug": ["Ibuprofen", "Sertralin", "Metformin", "Melatonin"],
           "effect": ["Kopfschmerzen", "Übelkeit", "Schwindel", "Schlafprobleme", "Herzrasen"],
           "vaccine": ["Grippeimpfung", "Corona-Auffrischimpfung", "Gürtelrose-Impfung"],
           "coping": ["Spazierengehen", "Tagebuchschreiben", "Yoga"]},
    "es": {"drug": ["ibuprofeno", "sertralina", "metformina", "paracetamol"],
           "effect": ["náuseas", "dolor de cabeza", "mareos", "insomnio"],
           "vaccine": ["vacuna de la gripe", "dosis de refuerzo contra la covid", "vacuna del VRS"],
           "coping": ["Caminar", "La meditación", "Hablar con amigos"]},
    "pt": {"drug": ["ibuprofeno", "sertralina", "dipirona", "metformina"],
           "effect": ["enjoo", "dor de cabeça", "tontura", "insônia"],
           "vaccine": ["vacina da gripe", "dose de reforço da covid"],
           "coping": ["Respirar fundo", "Caminhar", "Minha terapeuta"]},
    "ja": {"drug": ["ロキソニン", "メラトニン", "セルトラリン", "イブプロフェン"],
           "effect": ["頭痛", "吐き気", "めまい", "不眠"],
           "vaccine": ["インフルエンザの予防接種", "コロナのブースター"],
           "coping": ["散歩", "深呼吸", "猫"]},
}
TEMPLATES: dict[str, list[str]] = {
    "en": [
        "day {days} on {drug} and the {effect} is finally easing up",
        "anyone else get {effect} after the {vaccine}? arm is sore and I'm wiped out",
        "pharmacist says {effect} is common with {drug}. still annoying tbh",
        "switched from {drug} to {drug2}. the {effect} is gone but now it's {effect2} instead",
        "got my {vaccine} today, took ten minutes & there was no line",
        "my anxiety has been through the roof this week. {coping} is the only thing helping",
        "doctor doubled my {drug} dose. fingers crossed it doesn't bring back the {effect}",
        "why does nobody warn you that {drug} causes {effect}",
        "3am and wide awake again. thanks, {drug}",
        "reminder: the {vaccine} is free at most pharmacies this month",
        "stopped {drug} cold turkey (don't do this) and the {effect} is unreal",
        "half the office is out with the flu. wash your hands, people",
        "is it normal to still have {effect} {days} days after the {vaccine}?",
        "panic attack in the grocery store today. box breathing got me through it",
        "week {days} on {drug}:\n- {effect}\n- {effect2}\nstill worth it I think",
        "my kid's {vaccine} went fine, she got a sticker & a lollipop",
        "can't tell if it's {drug} or just November but the {effect} is real",
        'therapist asked me to rate my anxiety 1-10 and I said "yes"',
        "coffee number three and it's not even noon",
        "the bus was 40 minutes late again, love that for me",
    ],
    "de": ["Seit ich {drug} nehme, habe ich ständig {effect}. Ist das normal?",
           "Heute die {vaccine} bekommen. Arm tut weh, sonst alles gut.",
           "Meine Angst ist diese Woche wieder ganz schlimm, {coping} hilft ein bisschen.",
           "Hat jemand Erfahrung mit {drug}? Mein Arzt will die Dosis erhöhen."],
    "es": ["Desde que tomo {drug} tengo {effect} todo el día. ¿A alguien más le pasa?",
           "Hoy me puse la {vaccine}, me duele el brazo pero todo bien.",
           "La ansiedad no me deja dormir últimamente. {coping} ayuda un poco.",
           "Mi médico me cambió a {drug}, a ver qué tal."],
    "pt": ["Comecei a tomar {drug} e estou com {effect} direto. Alguém mais?",
           "Tomei a {vaccine} hoje, braço dolorido mas tudo certo.",
           "Crise de ansiedade no trabalho hoje. {coping} me salvou.",
           "Alguém sabe se {drug} dá {effect}? Tô preocupada."],
    "ja": ["{drug}を飲み始めてから{effect}がひどい…", "今日{vaccine}を打ってきた。腕が痛い。",
           "最近不安で眠れない。{coping}でなんとか。", "{drug}の副作用で{effect}って普通？"],
    "reply": ["same here, {drug} gave me {effect} for about a week", "hope you feel better soon!",
              "ask your pharmacist, they're great with this stuff", "this is really helpful, thank you",
              "did it get better after a few weeks?", "oof, the {vaccine} knocked me out for a day too"],
    "quote": ["this. exactly this.", "saving this for my next appointment",
              "important thread if you're on {drug}", "worth reading before your {vaccine}"],
    "edit": ["typo", "it was the {drug}, not the {drug2}", "feeling better now, thanks all"],
    "long": ["Long post about eight months of long covid, because people keep asking.",
             "The fatigue comes in waves and the brain fog is worse after any exertion.",
             "My GP tried {drug}, then {drug2}, and the {effect} was rough both times.",
             "Pacing helps more than anything else, and so does saying no to things.",
             "If you are newly sick: rest early, rest hard, and write everything down."],
}
#: Texts that trip up a pipeline, by kind: (language, template).
ODD = {
    "emoji": ("en", "third day of this migraine 🤕😵‍💫 {drug} isn't touching it 💊👍🏽"),
    "rtl": ("ar", "flu shot done ✅ أخذت لقاح الإنفلونزا اليوم والحمد لله بخير — קיבלתי גם חיסון"),
    "nul": ("en", "copied my dose schedule from the app:\u0000 {drug} twice daily"),
    "entities": ("en", "ibuprofen & paracetamol <together>? my GP said it's \"fine\" if I space them out"),
}
HASHTAGS = ["covid", "longcovid", "flushot", "vaccines", "sideeffects", "anxiety", "mentalhealth",
            "pharmacy", "chronicillness", "migraine", "Spoonie"]
LANGUAGES = {"en": 0.82, "de": 0.045, "es": 0.045, "pt": 0.045, "ja": 0.045}


def fill(rng: random.Random, template: str, language: str = "en") -> str:
    """Replace each ``{slot}`` (``{drug2}`` draws a second drug) with a seeded choice for ``language``."""
    slots = SLOTS[language]
    for key in ("drug2", "effect2", *slots):
        if "{" + key + "}" in template:
            template = template.replace("{" + key + "}", rng.choice(slots[key.rstrip("2")]))
    return template


def compose(rng: random.Random, language: str, kind: str | None = None) -> str:
    """A post in ``language``, or a ``reply``/``quote``/``edit`` note; 30% of posts end in hashtags."""
    text = fill(rng, rng.choice(TEMPLATES[kind or language]), language)
    if kind is None and rng.random() < 0.3:
        text += " " + " ".join("#" + tag for tag in rng.sample(HASHTAGS, rng.randint(1, 2)))
    return text


def compose_long(rng: random.Random) -> str:
    """A long-covid diary a little over ``OVERSIZED_CHARS`` characters."""
    parts: list[str] = []
    size = 0
    while size <= OVERSIZED_CHARS + 400:
        parts.append(fill(rng, rng.choice(TEMPLATES["long"])))
        size += len(parts[-1]) + 1
    return " ".join(parts)


def choose_language(rng: random.Random) -> str | None:
    """Mostly English; 4% of posts say no language at all."""
    return None if rng.random() < 0.04 else rng.choices(list(LANGUAGES), list(LANGUAGES.values()))[0]
