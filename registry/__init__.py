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
from .members import DEFAULT_PREFIX, EventKind, MemberEvent, MemberRecord, RegistryState
from .service import Registry
from .watch import ConfigWatcher, ControllerLocator, MembersWatch

__all__ = [
    "DEFAULT_PREFIX", "ConfigWatcher", "ControllerLocator", "EventKind", "MemberEvent", "MemberRecord",
    "MembersWatch", "Registry", "RegistryState",
]
