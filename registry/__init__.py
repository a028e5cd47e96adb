"""Fleet registry in etcd: members under leases, controller discovery, runtime config.

Sensor::

    reg = Registry(endpoints, member=MemberRecord(id="s1", role="sensor", site="paris", ...))
    reg.start()                      # never blocks on etcd
    target = reg.locator().current() # controller host:port, or None
    bpf = reg.config("sensor").get("bpf")

Controller::

    reg = Registry(endpoints, member=MemberRecord(id="c1", role="controller", address="10.0.0.5:50051"))
    reg.on_change(lambda ev: ...)    # MemberEvent(kind join/update/leave, member)
    reg.start()
"""
from typing import TYPE_CHECKING, Any

from .members import DEFAULT_PREFIX, EventKind, MemberEvent, MemberRecord, RegistryState
from .schema import SchemaError
from .security import EtcdSecurity, EtcdSecurityError

if TYPE_CHECKING:
    from .service import Registry
    from .watch import ConfigWatcher, ControllerLocator, MembersWatch

_LAZY = {"Registry": "service", "ConfigWatcher": "watch", "ControllerLocator": "watch",
         "MembersWatch": "watch"}


def __getattr__(name: str) -> Any:
    """The etcd client side on first use: a process that never talks to etcd (a
    `spanrec record`, a shard's hash ring) does not load the etcd client library."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_PREFIX", "ConfigWatcher", "ControllerLocator", "EtcdSecurity", "EtcdSecurityError", "EventKind",
    "MemberEvent", "MemberRecord", "MembersWatch", "Registry", "RegistryState", "SchemaError",
]


def credentials_from_env() -> tuple[str | None, str | None]:
    """etcd user and password from SPANREC_ETCD_USER and SPANREC_ETCD_PASSWORD
    (or SPANREC_ETCD_PASSWORD_FILE, a file holding it): never from a flag, so
    they are not in `ps` output, and never logged."""
    import os
    user = os.environ.get("SPANREC_ETCD_USER") or None
    password = os.environ.get("SPANREC_ETCD_PASSWORD") or None
    path = os.environ.get("SPANREC_ETCD_PASSWORD_FILE")
    if password is None and path:
        with open(path, encoding="utf-8") as f:
            password = f.read().strip() or None
    return user, password


def parse_endpoints(text: str) -> list[str]:
    """`--etcd` value: a comma-separated list of host:port."""
    return [e.strip() for e in text.split(",") if e.strip()]
