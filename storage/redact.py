"""Secrets out of messages: URLs with credentials, keys and passwords.

`redact_url` hides the user-info of a URL (`s3://KEY:SECRET@bucket/x` ->
`s3://***@bucket/x`) and the values of query parameters that look like
credentials; `redact` also replaces every known secret value (the S3 keys and
the etcd password from the environment, or `*_FILE` files) wherever it
appears, so one-line errors and logs never carry them.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

SECRET_ENV = ("SPANREC_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "SPANREC_S3_ACCESS_KEY",
              "AWS_ACCESS_KEY_ID", "SPANREC_ETCD_PASSWORD", "AWS_SESSION_TOKEN")
MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/@\s'\"]+)@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|"
    r"password|passwd|secret[_-]?key|access[_-]?key|token|awsaccesskeyid)=)[^&\s'\"]*")
_MIN_SECRET = 4     # shorter values would mask ordinary words


def redact_url(url: str) -> str:
    """The URL with credentials masked (user-info, credential query values)."""
    return _QUERY_SECRET.sub(lambda m: m.group("key") + MASK,
                             _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", url))


def known_secrets(extra: Iterable[str | None] = ()) -> list[str]:
    """Secret values of this process: the environment's keys and passwords
    (also through NAME_FILE) and `extra`; longest first."""
    values = {v for v in extra if v}
    for name in SECRET_ENV:
        if os.environ.get(name):
            values.add(os.environ[name])
        path = os.environ.get(name + "_FILE")
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    values.add(f.read().strip())
            except OSError:
                pass
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with URLs' credentials and every known secret value masked."""
    text = redact_url(text)
    for value in known_secrets(extra):
        text = text.replace(value, MASK)
    return text
