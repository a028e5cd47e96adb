"""What may be stored under the prefix: member records and runtime config, checked.

Anyone who can write under ``/spanrec/`` steers the fleet, so what is read
back is validated before it is believed (pydantic, strict types and bounds):

* a member record with a wrong type, an out-of-range field or an ``address``
  that is not ``host:port`` is ignored (logged and counted by the watcher);
  unknown fields are still ignored, so a newer member can add some;
* runtime config (``config/sensor``, ``config/controller``) refuses unknown
  keys and wrong types: the watcher logs the refusal and keeps the last good
  config.  ``record_rules`` and ``retention`` are checked here as objects only;
  their content is the controller's to check (``controller.calls.rules``,
  ``storage.retention``).
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic import field_validator

_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")
LiveValue = StrictInt | StrictFloat | StrictStr | StrictBool | None


class SchemaError(ValueError):
    """A stored value that does not fit; the message names the first bad field."""


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    return f"{where}: {err['msg']}"


def check_address(value: str) -> str:
    """``host:port`` with a plausible host and a port 1..65535 (empty: no address)."""
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {value[:80]!r}")
    return value


class MemberSchema(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    id: str = Field(pattern=_ID)
    role: Literal["sensor", "controller"]
    site: str = Field("", max_length=128)
    version: str = Field("", max_length=64)
    address: str = Field("", max_length=262)
    interfaces: list[StrictStr] = Field(default_factory=list, max_length=64)
    started_at: str = Field("", max_length=40)
    live: dict[str, LiveValue] = Field(default_factory=dict, max_length=64)
    updated_at: str = Field("", max_length=40)

    _addr = field_validator("address")(lambda cls, v: check_address(v))

    @field_validator("started_at", "updated_at")
    @classmethod
    def _iso(cls, v: str) -> str:
        if v:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        return v


class SensorConfig(BaseModel):
    """``<prefix>config/sensor``."""
    model_config = ConfigDict(extra="forbid", strict=True)
    bpf: str | None = Field(None, max_length=8192)


class ControllerConfig(BaseModel):
    """``<prefix>config/controller``."""
    model_config = ConfigDict(extra="forbid", strict=True)
    record_rules: dict[str, Any] | None = None
    retention: dict[str, Any] | None = None     # its content: storage.retention (issue #15)


CONFIG_SCHEMAS: dict[str, type[BaseModel]] = {"sensor": SensorConfig, "controller": ControllerConfig}


def check_member(data: dict[str, Any]) -> dict[str, Any]:
    """The record's fields, checked; ``SchemaError`` naming the first bad one."""
    try:
        return MemberSchema.model_validate(data).model_dump()
    except ValidationError as exc:
        raise SchemaError(_first_error(exc)) from None


def check_config(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """A runtime config object checked against its schema (``sensor``, ``controller``);
    other names are only required to be objects.  Returns ``data`` as given."""
    schema = CONFIG_SCHEMAS.get(name)
    if schema is not None:
        try:
            schema.model_validate(data)
        except ValidationError as exc:
            raise SchemaError(_first_error(exc)) from None
    return data
