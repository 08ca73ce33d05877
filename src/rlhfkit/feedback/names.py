"""Usernames that name one person each, and passwords that are not the first ones an attacker tries.

A username is kept as it was typed (NFKC-normalised: full-width ``ａｌｉｃｅ`` is ``alice``) and
compared by its *key*: case-folded, with the letters of other scripts that look like Latin ones
mapped to those (Cyrillic ``а`` -> ``a``, Greek ``ο`` -> ``o``). ``alice``, ``Alice`` and ``ALICE``
have one key, so only one of them can exist, and whoever types any of them reaches that account.
A name mixing scripts (Latin ``alice`` with a Cyrillic ``а``) is refused outright: it exists only
to look like someone else. The homoglyph table is short and covers the scripts that mimic Latin
most (Cyrillic, Greek, a few Latin look-alikes); it is not Unicode's full confusables list.
"""

from __future__ import annotations

import unicodedata

from rlhfkit.feedback.checks import text_problem

MAX_USERNAME_CHARS = 80
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_CHARS = 1024
USERNAME_PUNCTUATION = "._-@"
MAX_KEY_CHARS = 255
NO_KEY = "\x7f"
"""The key of text that can be no username (no account has it)."""

HOMOGLYPHS = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ү": "y", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j",
    # Latin look-alikes
    "ı": "i", "ȷ": "j", "ʏ": "y", "ɑ": "a",
})

COMMON_PASSWORDS = frozenset("""
12345678 123456789 1234567890 0123456789 87654321 11111111 00000000 12341234 11223344 12121212
password password1 password12 password123 passw0rd p@ssw0rd p@ssword passwort motdepasse contraseña
qwertyui qwertyuiop qwerty123 qwerty12 azertyui asdfghjk asdfasdf zxcvbnm1 1q2w3e4r 1qaz2wsx qazwsxedc
iloveyou iloveyou1 sunshine princess football baseball superman batman123 starwars whatever trustno1
letmein1 welcome1 welcome123 admin123 administrator changeme changeme1 default1 abcd1234 abc12345
abcdefgh 123abc123 aaaaaaaa monkey123 dragon123 master123 shadow123 michael1 jennifer computer
internet 1234qwer qwer1234 a1b2c3d4 secret123 samsung1 football1 charlie1 freedom1 corvette
""".split())  # noqa: SIM905
"""Passwords found at the top of every leaked-password list (compared case-insensitively)."""


SCRIPTS_WRITTEN_TOGETHER = ({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}, {"LATIN", "CJK", "BOPOMOFO"},
                            {"LATIN", "CJK", "HANGUL"})
"""Scripts one name may mix (Unicode TS #39's "highly restrictive" level): Japanese, Chinese, Korean."""


def script_of(character: str) -> str | None:
    """The script of a letter, from its Unicode name (``LATIN``, ``CYRILLIC``, ``CJK``...); None otherwise."""
    if not character.isalpha():
        return None
    name = unicodedata.name(character, "UNKNOWN")
    first = name.split(" ", 1)[0]
    return "KATAKANA" if first == "KATAKANA-HIRAGANA" else first


def mixed_scripts(name: str) -> set[str] | None:
    """The scripts of a name's letters when they are a mix no language writes, else None."""
    scripts = {script for c in name if (script := script_of(c)) is not None}
    if len(scripts) <= 1 or any(scripts <= allowed for allowed in SCRIPTS_WRITTEN_TOGETHER):
        return None
    return scripts


def clean_username(typed: str) -> str:
    """The username to store for what was typed (NFKC, trimmed); a ValueError says what is wrong."""
    if not isinstance(typed, str) or text_problem(typed) is not None:
        raise ValueError("username: use letters, digits or . _ - @ only")
    name = unicodedata.normalize("NFKC", typed).strip()
    if not 1 <= len(name) <= MAX_USERNAME_CHARS or not all(c.isalnum() or c in USERNAME_PUNCTUATION for c in name):
        raise ValueError(f"username: use 1 to {MAX_USERNAME_CHARS} letters, digits or {' '.join(USERNAME_PUNCTUATION)}")
    if (scripts := mixed_scripts(name)) is not None:
        raise ValueError(f"username: use letters of one script, not a mix ({', '.join(sorted(scripts)).lower()}): "
                         "mixed names can imitate someone else's")
    return name


def username_key(typed: str) -> str:
    """What usernames are compared by: NFKC, case-folded, look-alike letters mapped to Latin ones.

    Never raises: text that could never be a username gets a key no account has.
    """
    if not isinstance(typed, str) or len(typed) > 4 * MAX_USERNAME_CHARS or text_problem(typed) is not None:
        return NO_KEY
    folded = unicodedata.normalize("NFKC", typed).strip().casefold()
    return unicodedata.normalize("NFKC", folded.translate(HOMOGLYPHS))


def password_problem(password: str, username: str = "") -> str | None:
    """Why a new password is refused (too short or long, common, all one character, the username), or None."""
    if not isinstance(password, str) or text_problem(password) is not None:
        return "password: use ordinary text (no NUL or unpaired surrogate characters)"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password: use at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"password: use at most {MAX_PASSWORD_CHARS} characters"
    if not password.strip():
        return "password: use something other than spaces"
    if len(set(password)) < 3:
        return "password: use more than one or two different characters"
    if password.strip().casefold() in COMMON_PASSWORDS:
        return "password: this is one of the most common passwords; choose another (a few words work well)"
    if username and username_key(password) == username_key(username):
        return "password: do not use your username"
    return None
