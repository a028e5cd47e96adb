"""What the registry stores: member records, their keys, events and state.

A member is one sensor or controller process.  Its record is JSON under
``<prefix>members/<role>/<id>``, attached to a lease so it vanishes when the
process dies::

    {"id": "s1", "site": "paris", "role": "sensor", "version": "0.1.0",
     "address": "", "interfaces": ["eth1"], "started_at": "2026-11-26T15:04:05Z",
     "live": {"captured": 1234}, "updated_at": "2026-11-26T15:04:07Z"}

``address`` is what sensors dial for a controller (``host:port``); ``live``
holds optional fields the process updates while running (counters for a
fleet view).  Unknown JSON fields are ignored when reading, so newer members
can add fields without breaking older readers.
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

ROLES = ("sensor", "controller")
DEFAULT_PREFIX = "/spanrec/"


class RegistryState(str, enum.Enum):
    """Connection state of a registry client."""

    CONNECTING = "connecting"  # never reached etcd yet
    OK = "ok"  # registered (if a member) and watching
    DEGRADED = "degraded"  # etcd unreachable: last known state kept, retrying
    STOPPED = "stopped"


def utc_now() -> str:
    """Current UTC time, ISO 8601 with a ``Z`` and second precision."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_prefix(prefix: str) -> str:
    """``spanrec`` → ``/spanrec/``: always a leading and a trailing slash."""
    prefix = "/" + prefix.strip("/") + "/"
    return "/" if prefix == "//" else prefix


def members_prefix(prefix: str, role: str | None = None) -> str:
    base = normalize_prefix(prefix) + "members/"
    return base if role is None else f"{base}{role}/"


def config_key(prefix: str, name: str) -> str:
    """``config_key('/spanrec/', 'sensor')`` → ``/spanrec/config/sensor``; a full key is kept."""
    if name.startswith("/"):
        return name
    return f"{normalize_prefix(prefix)}config/{name}"


@dataclass(frozen=True)
class MemberRecord:
    id: str
    role: str
    site: str = ""
    version: str = ""
    address: str = ""
    interfaces: tuple[str, ...] = ()
    started_at: str = field(default_factory=utc_now)
    live: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    updated_at: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"member role must be one of {ROLES}, not {self.role!r}")
        if not self.id or "/" in self.id or any(c.isspace() for c in self.id):
            raise ValueError(f"member id must be non-empty without '/' or spaces: {self.id!r}")
        if not isinstance(self.interfaces, tuple):
            object.__setattr__(self, "interfaces", tuple(self.interfaces))

    def key(self, prefix: str = DEFAULT_PREFIX) -> str:
        return members_prefix(prefix, self.role) + self.id

    def with_live(self, live: dict[str, Any]) -> MemberRecord:
        return replace(self, live=dict(live), updated_at=utc_now())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "site": self.site, "role": self.role, "version": self.version,
            "address": self.address, "interfaces": list(self.interfaces),
            "started_at": self.started_at,
        }
        if self.live:
            out["live"] = dict(self.live)
        if self.updated_at:
            out["updated_at"] = self.updated_at
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberRecord:
        """Checked (``registry.schema``): wrong types, bounds or address are a ``ValueError``."""
        from .schema import check_member
        data = check_member(data)
        live = data.get("live") or {}
        return cls(
            id=str(data["id"]), role=str(data["role"]), site=str(data.get("site", "")),
            version=str(data.get("version", "")), address=str(data.get("address", "")),
            interfaces=tuple(str(i) for i in data.get("interfaces") or ()),
            started_at=str(data.get("started_at", "")),
            live=dict(live) if isinstance(live, dict) else {},
            updated_at=str(data.get("updated_at", "")),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> MemberRecord:
        """Parse a stored record; ``ValueError`` (incl. ``JSONDecodeError``) if it is not one."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("member record is not a JSON object")
        try:
            return cls.from_dict(data)
        except KeyError as exc:
            raise ValueError(f"member record lacks {exc.args[0]!r}") from None


class EventKind(str, enum.Enum):
    JOIN = "join"
    UPDATE = "update"
    LEAVE = "leave"


@dataclass(frozen=True)
class MemberEvent:
    """A change seen by a members watch.  ``member`` is the last record for a leave."""

    kind: EventKind
    member: MemberRecord

    @property
    def key(self) -> str:
        return f"{self.member.role}/{self.member.id}"
