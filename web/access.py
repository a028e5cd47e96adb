"""Who may see which call in the web player (users of callindex/users.py).

admin: every call; supervisor and listener: calls where either party matches
one of their number patterns (the same rule the index applies in SQL,
callindex/query.py, and the Admin API for a limited operator certificate);
auditor: no call, the audit trail only.
"""
from __future__ import annotations

from typing import Any

from callindex.numbers import party_matches
from callindex.users import User

__all__ = ["may_see_call", "may_see_audit"]


def may_see_call(user: User, call: dict[str, Any]) -> bool:
    """`call`: an index row or a call.json (keys 'from' and 'to')."""
    if user.role == "admin":
        return True
    if user.role == "auditor":
        return False
    return party_matches(user.numbers, call.get("from"), call.get("to"))


def may_see_audit(user: User) -> bool:
    return user.role in ("admin", "auditor")
