"""A small built-in lexicon that flags sensitive content, so annotators see a warning first.

Each category is a list of words matched case-insensitively as whole words with common endings
("kill" matches "kills", "killed", "killing" and "killer", not "skill"); an entry ending in ``*`` is
a prefix ("suicid*" matches "suicidal"). It is deliberately broad: a false warning costs a click, a
missed one exposes someone unprepared. Annotators can flag what it misses (``flag`` in the app), and
an admin can run the app without it (``--no-lexicon`` at import). It is no classifier: it reads words,
not meaning, and says so on the warning.
"""

from __future__ import annotations

import re

CATEGORY_STEMS: dict[str, tuple[str, ...]] = {
    "violence": (
        "kill", "murder*", "stab", "stabb*", "shoot", "shot", "gun", "weapon", "bomb", "explosive",
        "assault", "attack", "beat up", "beating", "tortur*", "strangl*", "choke", "punch", "hurt",
        "massacre", "behead*", "blood*", "knife", "knives", "poison*", "violen*", "kidnap*", "fight",
        "harm", "abuse", "slap", "die", "dead", "death",
    ),
    "self-harm": (
        "suicid*", "kill myself", "self-harm", "self harm", "cut myself", "cutting myself", "end my life",
        "overdos*", "hang myself", "want to die", "anorexi*", "bulimi*", "starve myself",
    ),
    "sexual content": (
        "sex", "sexual*", "sexy", "porn*", "nude", "naked", "orgasm*", "genital*", "penis", "vagina",
        "breast", "erotic*", "fetish*", "prostitut*", "escort", "rape", "molest*", "masturbat*", "horny",
        "boob", "dick", "pussy", "cock", "slut", "whore", "hooker",
    ),
    "hate": (
        "racist", "racism", "sexist", "bigot*", "slur", "inferior", "white power", "supremac*", "nazi",
        "hitler", "ethnic cleansing", "hate", "homophob*", "transphob*", "antisemit*", "n-word",
        "subhuman", "master race", "xenophob*", "stereotyp*", "black people", "white people", "mexicans",
        "jews", "muslims", "immigrants", "gay", "retard*",
    ),
    "harassment": (
        "fuck*", "shit*", "bitch*", "asshole", "damn", "stupid", "idiot*", "dumb", "ugly", "loser", "insult*",
        "prank*", "revenge", "tarnish*", "humiliat*", "bully*", "bulli*", "harass*", "stalk*", "threaten*",
        "home address", "residential address", "phone number",
    ),
    "crime": (
        "steal", "stole", "stolen", "theft", "thief", "thieves", "rob", "robb*", "burglar*", "shoplift*",
        "fraud*", "scam", "scamm*", "launder*", "counterfeit*", "hack", "hacking", "break into", "drug",
        "cocaine", "heroin", "meth", "smuggl*", "illegal*", "embezzl*", "extort*", "blackmail*", "bribe",
        "arson", "vandal*", "get away with", "pick a lock", "hotwire", "fake id", "crime", "criminal",
        "prison", "jail", "cheat", "lie", "lies", "trespass*", "pirat*", "felon*", "fake", "forg*", "gang",
        "dark web", "alcohol", "drunk", "weed", "marijuana",
    ),
}
"""Category name -> word stems (lower case). The categories annotators can opt out of."""

CATEGORIES = tuple(CATEGORY_STEMS)


WORD_ENDINGS = r"(?:s|es|ed|ing|er|ers|y)?(?![a-z0-9])"
"""What may follow a whole-word entry: a common ending, then the end of the word."""


def _entry_pattern(entry: str) -> str:
    if entry.endswith("*"):
        return re.escape(entry[:-1])
    return re.escape(entry) + WORD_ENDINGS


def _category_pattern(entries: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(_entry_pattern(entry) for entry in sorted(entries, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})", re.IGNORECASE)


CATEGORY_PATTERNS = {category: _category_pattern(stems) for category, stems in CATEGORY_STEMS.items()}


def flag_categories(text: str) -> list[str]:
    """The sensitive categories whose stems occur in ``text``, in CATEGORIES order."""
    return [category for category, pattern in CATEGORY_PATTERNS.items() if pattern.search(text)]


def text_of(value: object) -> str:
    """All the text of a prompt or response (a string, or the contents of a list of messages)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text_of(message.get("content", "")) if isinstance(message, dict) else text_of(message)
                         for message in value)
    return ""
