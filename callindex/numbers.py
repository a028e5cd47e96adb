"""Who called whom, as people search for it: the user part of a SIP or tel URI
and, when it is a telephone number, that number in one normal form.

Phones, PBXs and SBCs write one number many ways: ``sip:+49-30-1234@host;user=phone``,
``tel:+49.30.1234``, ``sip:%2B49301234@host``, ``<sip:0301234@pbx>``. RFC 3966 §5.1.1
lets a number carry visual separators (``-``, ``.``, ``(``, ``)``) that are not part
of it; RFC 3261 §19.1.1 lets the user part be percent-encoded and carry
parameters after ``;``. The normal form keeps a leading ``+``, the digits and
``*``/``#`` (feature codes), and drops the rest; a user part with any other
character (``alice``, ``anonymous``) is a name, not a number.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["uri_user", "normalise_number", "number_query", "pattern_to_like", "party_matches"]

_SEPARATORS = str.maketrans("", "", "-.() \t")
_NUMBER = re.compile(r"\+?[0-9*#]+")
_QUERY_KEEP = re.compile(r"[^0-9*#+]")


def uri_user(uri: str | None) -> str:
    """The user part of a SIP/SIPS/tel URI (percent-decoded, parameters and
    the host dropped); '' when there is none. A name-addr (``"A" <sip:...>``)
    is reduced to its URI first."""
    if not uri:
        return ""
    s = uri.strip()
    lt = s.find("<")
    if lt >= 0:
        gt = s.find(">", lt)
        s = s[lt + 1:gt if gt > lt else len(s)]
    scheme, colon, rest = s.partition(":")
    if not colon:
        return ""
    scheme = scheme.strip().lower()
    if scheme in ("sip", "sips"):
        at = rest.rfind("@")
        if at < 0:
            return ""            # sip:host - no user part
        user = rest[:at]
    elif scheme == "tel":
        user = rest
    else:
        return ""
    user = user.split(";", 1)[0]      # user parameters (RFC 3261), tel parameters (RFC 3966)
    if scheme != "tel":
        user = user.split(":", 1)[0]  # a password (deprecated, RFC 3261 §19.1.1)
    try:
        return unquote(user, errors="strict")
    except UnicodeDecodeError:
        return user


def normalise_number(user: str) -> str | None:
    """The user part as a number (``+`` and digits, ``*``/``#``) or None if it is
    a name. ``+49 (30) 12-34`` -> ``+49301234``."""
    s = user.translate(_SEPARATORS)
    if not s or not _NUMBER.fullmatch(s):
        return None
    return s


def number_query(text: str) -> str:
    """What a user typed as a number, in the stored form: separators removed,
    so ``030-1234`` finds ``0301234``. Text with letters is kept (lower-cased)
    and searched among the user parts instead."""
    s = text.strip()
    if normalise_number(s) is not None:
        return s.translate(_SEPARATORS)
    return s.lower()


def pattern_to_like(pattern: str) -> str:
    """A number pattern of a role (shell-style: ``*`` any run, ``?`` one
    character; ``+4930*``) as an SQL LIKE pattern with ``\\`` as the escape.
    A ``*`` right after a digit is a wildcard; feature codes in patterns
    (``*72``) are written ``[*]72``."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "[" and i + 2 < len(pattern) and pattern[i + 2] == "]":
            lit = pattern[i + 1]
            out.append("\\" + lit if lit in "%_\\" else lit)
            i += 3
            continue
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        elif ch in "-.() \t":
            pass                      # separators, as in stored numbers
        else:
            out.append(ch.lower())
        i += 1
    return "".join(out)


def _like_regex(like: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(like):
        ch = like[i]
        if ch == "\\" and i + 1 < len(like):
            out.append(re.escape(like[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def party_matches(patterns: list[str] | tuple[str, ...], *uris: str | None) -> bool:
    """True when the number or user part of one of `uris` matches one of the
    patterns — the rule the index applies in SQL (callindex/query.py), for a
    call that is not in the index (an active call, a call.json read from storage)."""
    regexes = [_like_regex(pattern_to_like(p)) for p in patterns]
    for uri in uris:
        user = uri_user(uri)
        values = [user.lower()]
        num = normalise_number(user)
        if num is not None:
            values.append(num)
        for v in values:
            if any(r.fullmatch(v) for r in regexes):
                return True
    return False
