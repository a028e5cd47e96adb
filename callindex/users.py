"""Users of the web player and who may see what.

Roles: ``admin`` (everything, users), ``supervisor`` (calls where either
party matches one of the user's number patterns — their groups' numbers),
``listener`` (the same rule, for their own numbers), ``auditor`` (the audit
trail only, no calls). Passwords are hashed with argon2id (argon2-cffi's
defaults, RFC 9106); a hash made with weaker parameters is replaced at the
next sign-in.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from callindex.db import CallIndex, _unavailable
from callindex.schema import users

__all__ = ["ROLES", "User", "UserError", "Users"]

ROLES = ("admin", "supervisor", "listener", "auditor")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_hasher = PasswordHasher()
# a hash to verify against when the user does not exist: the same time either way
_DUMMY = _hasher.hash("spanrec-no-such-user")


class UserError(ValueError):
    """A user that cannot be made or changed (why)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    numbers: tuple[str, ...]

    def allowed(self) -> list[str] | None:
        """Number patterns a search is limited to (None: all calls; [] : none)."""
        if self.role == "admin":
            return None
        if self.role == "auditor":
            return []
        return list(self.numbers)

    @property
    def sees_calls(self) -> bool:
        return self.role != "auditor"


class Users:
    def __init__(self, index: CallIndex) -> None:
        self.index = index

    def add(self, name: str, role: str, password: str, numbers: list[str] | tuple[str, ...] = ()) -> User:
        if not _NAME.match(name):
            raise UserError(f"user name {name!r}: 1-128 of letters, digits and _ . @ -")
        if role not in ROLES:
            raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise UserError("password: at least 8 characters")
        if role in ("supervisor", "listener") and not numbers:
            raise UserError(f"a {role} needs --numbers (the number patterns whose calls it may see)")
        pats = [p.strip() for p in numbers if p.strip()]
        try:
            with self.index.engine.begin() as conn:
                conn.execute(insert(users).values(
                    name=name, role=role, numbers=json.dumps(pats), password_hash=_hasher.hash(password),
                    created_us=time.time_ns() // 1000, disabled=False))
        except IntegrityError:
            raise UserError(f"user {name!r} exists") from None
        except SQLAlchemyError as exc:
            raise _unavailable("cannot add a user", self.index.url, exc) from None
        return User(name, role, tuple(pats))

    def remove(self, name: str) -> bool:
        try:
            with self.index.engine.begin() as conn:
                return conn.execute(delete(users).where(users.c.name == name)).rowcount > 0
        except SQLAlchemyError as exc:
            raise _unavailable("cannot remove a user", self.index.url, exc) from None

    def get(self, name: str) -> User | None:
        try:
            with self.index.engine.connect() as conn:
                r = conn.execute(select(users).where(users.c.name == name, users.c.disabled.is_(False))).first()
        except SQLAlchemyError as exc:
            raise _unavailable("cannot read users", self.index.url, exc) from None
        return None if r is None else User(r.name, r.role, tuple(json.loads(r.numbers)))

    def list(self) -> list[User]:
        try:
            with self.index.engine.connect() as conn:
                rows = conn.execute(select(users).order_by(users.c.name)).all()
        except SQLAlchemyError as exc:
            raise _unavailable("cannot read users", self.index.url, exc) from None
        return [User(r.name, r.role, tuple(json.loads(r.numbers))) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is right, else None (same cost either way)."""
        try:
            with self.index.engine.connect() as conn:
                r = conn.execute(select(users).where(users.c.name == name)).first()
        except SQLAlchemyError as exc:
            raise _unavailable("cannot read users", self.index.url, exc) from None
        stored = r.password_hash if r is not None else _DUMMY
        try:
            _hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if r is None or r.disabled:
            return None
        if _hasher.check_needs_rehash(stored):
            try:
                with self.index.engine.begin() as conn:
                    conn.execute(update(users).where(users.c.name == name)
                                 .values(password_hash=_hasher.hash(password)))
            except SQLAlchemyError:
                pass
        return User(r.name, r.role, tuple(json.loads(r.numbers)))
