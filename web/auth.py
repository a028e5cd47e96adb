"""Sign-in, sessions and CSRF for the web player.

Sessions are Starlette's signed cookies (itsdangerous, HMAC-SHA1 over the
session with the server's secret key; HttpOnly, SameSite=Strict, Secure
unless the operator runs the lab without TLS). The session holds the user's
name and a CSRF token; the user is read from the index at every request, so a
removed user is out at once. Every form that changes something (sign-in,
sign-out) carries the session's CSRF token (synchronizer token pattern,
OWASP), compared in constant time.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import Request

from callindex.users import User, Users

__all__ = ["csrf_token", "check_csrf", "session_user", "load_secret", "SESSION_MAX_AGE_S"]

SESSION_MAX_AGE_S = 8 * 3600


def csrf_token(request: Request) -> str:
    tok = request.session.get("csrf")
    if not tok:
        tok = secrets.token_urlsafe(32)
        request.session["csrf"] = tok
    return tok


def check_csrf(request: Request, sent: str | None) -> bool:
    tok = request.session.get("csrf")
    return bool(tok and sent and secrets.compare_digest(tok, sent))


def session_user(request: Request, users: Users) -> User | None:
    name = request.session.get("user")
    if not name:
        return None
    user = users.get(name)
    if user is None:
        request.session.clear()
    return user


def load_secret(path: Path | None) -> str:
    """The session key: from a file (kept across restarts and shared by replicas),
    else a new one per process (everyone signs in again after a restart)."""
    if path is None:
        return secrets.token_urlsafe(48)
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"session key file {path}: {exc.strerror or exc}") from None
    if len(text) < 32:
        raise ValueError(f"session key file {path}: at least 32 characters")
    return text
