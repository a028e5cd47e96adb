"""The admin Status carries the authorization refusals of every certificate
(controller/api/authz.py), summed (issue #11)."""
from __future__ import annotations

import asyncio

from controller.api.authz import Authorizer
from controller.core import Recorder
from controller.api.link import AdminServicer
from proto import admin_pb2
from storage.local import LocalStore
from transport.roles import PeerIdentity


def test_status_sums_refusals_of_every_certificate(tmp_path) -> None:
    authz = Authorizer()
    auditor, bad = PeerIdentity("ops", "auditor"), PeerIdentity("odd", "", problem="two roles")
    for _ in range(3):
        authz.refused(auditor, "/spanrec.SensorLink/Stream", "auditor may not stream", "ipv4:1")
    authz.refused(bad, "/spanrec.Admin/GetStatus", "invalid role", "ipv4:2")
    recorder = Recorder(LocalStore(tmp_path))
    try:
        req = admin_pb2.StatusRequest()
        st = asyncio.run(AdminServicer(recorder, authorizer=authz).GetStatus(req, None))
        assert st.authz_refused == 4
        assert asyncio.run(AdminServicer(recorder).GetStatus(req, None)).authz_refused == 0
    finally:
        close = getattr(recorder, "close", None)
        if close:
            close()
