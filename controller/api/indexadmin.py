"""The Admin API's side of the call index (issue #14): search, the audit
trail, and which calls a certificate may see. Transport-free: the servicer
(controller/api/link.py) turns requests into calls here and `Refused` into a
status code.

Who may see what: an operator certificate with number patterns
(transport/roles.py, `make-certs client NAME --role operator --numbers P`)
sees, searches and downloads only calls where either party matches; others
see everything their role allows (controller/api/authz.py). Every search,
call view and file download is appended to the audit trail with the
certificate's CN, role and address; when the index (which holds the trail) is
configured but cannot take the entry, the request is refused rather than
served unaudited. A controller without --index logs the entries instead.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from proto import admin_pb2
from transport.roles import PeerIdentity

log = logging.getLogger("spanrec.audit")

__all__ = ["IndexAdmin", "Refused", "query_of"]


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _opt(request: Any, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None


def query_of(request: admin_pb2.SearchRequest, allowed: list[str] | None):
    """The CallQuery of a SearchRequest (Refused INVALID_ARGUMENT if it cannot be run)."""
    from callindex.query import CallQuery, QueryError, parse_when
    try:
        return CallQuery(
            since_us=parse_when(_opt(request, "since")), until_us=parse_when(_opt(request, "until")),
            number=_opt(request, "number"), from_number=_opt(request, "from_number"),
            to_number=_opt(request, "to_number"), match=request.match or "substring",
            call_id=_opt(request, "call_id"), status=_opt(request, "status"),
            min_duration_s=_opt(request, "min_duration_s"), max_duration_s=_opt(request, "max_duration_s"),
            site=_opt(request, "site"), sensor=_opt(request, "sensor"), codec=_opt(request, "codec"),
            mos_below=_opt(request, "mos_below"), has_dtmf=_opt(request, "has_dtmf"),
            has_hold=_opt(request, "has_hold"), sort=request.sort or "-started",
            limit=request.limit or 50, offset=request.offset, allowed=allowed)
    except QueryError as exc:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def _indexed_call(c: dict) -> admin_pb2.IndexedCall:
    out = admin_pb2.IndexedCall(
        id=c["id"], prefix=c["prefix"], location=c["location"] or "", started_at=c["started_at"] or "",
        answered_at=c["answered_at"] or "", ended_at=c["ended_at"] or "", from_uri=c["from"] or "",
        to_uri=c["to"] or "", from_number=c["from_number"] or "", to_number=c["to_number"] or "",
        call_ids=c["call_ids"], status=c["status"], final_response=c["final_response"] or 0,
        end_reason=c["end_reason"] or "", recorded=c["recorded"], encrypted=c["encrypted"],
        has_dtmf=c["has_dtmf"], has_hold=c["has_hold"], codecs=c["codecs"], sensors=c["sensors"],
        sites=c["sites"])
    for k in ("duration_s", "mos_caller", "mos_callee", "loss_caller", "loss_callee"):
        if c[k] is not None:
            setattr(out, k, c[k])
    return out


class IndexAdmin:
    def __init__(self, store: Any) -> None:
        self.indexer = getattr(store, "indexer", None)     # callindex/indexer.py, or None

    def _index(self):
        from callindex.db import IndexUnavailable
        if self.indexer is None:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          "this controller has no call index (spanrec controller --index URL)")
        index = self.indexer.index
        if index is None:
            try:
                index = self.indexer._connect()
                self.indexer.index = index
            except (IndexUnavailable, Exception) as exc:  # noqa: BLE001
                raise Refused(grpc.StatusCode.UNAVAILABLE, f"call index unavailable: {exc}") from None
        return index

    # -- who may see what ------------------------------------------------------
    @staticmethod
    def limited(peer: PeerIdentity | None) -> list[str] | None:
        """The number patterns a caller is limited to (None: not limited)."""
        if peer is None or peer.numbers is None:
            return None
        return list(peer.numbers)

    def may_see(self, peer: PeerIdentity | None, call: dict) -> bool:
        pats = self.limited(peer)
        if pats is None:
            return True
        from callindex.numbers import party_matches
        return party_matches(pats, call.get("from"), call.get("to"))

    # -- the audit trail -------------------------------------------------------
    def audit(self, peer: PeerIdentity | None, address: str, action: str, *,
              recording_id: str | None = None, detail: dict | None = None) -> None:
        actor = peer.name if peer is not None else "(plain text)"
        role = peer.role if peer is not None else ""
        if self.indexer is None:
            log.info("audit", extra={"actor": actor, "role": role, "action": action,
                                     "recording_id": recording_id, "address": address,
                                     "detail": detail or {}})
            return
        from callindex.audit import AuditTrail
        from callindex.db import IndexUnavailable
        try:
            AuditTrail(self._index()).append(actor, role, action, recording_id=recording_id,
                                             address=address, detail=detail)
        except IndexUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE,
                          f"not served: the audit trail cannot record it ({exc})") from None

    # -- requests ----------------------------------------------------------------
    def search(self, request: admin_pb2.SearchRequest, peer: PeerIdentity | None,
               address: str) -> admin_pb2.SearchResult:
        from callindex.db import IndexUnavailable
        q = query_of(request, self.limited(peer))
        index = self._index()
        detail = {k: v for k, v in q.to_dict().items() if k != "allowed"}
        self.audit(peer, address, "search", detail=detail)
        try:
            page = index.search(q)
        except IndexUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        return admin_pb2.SearchResult(calls=[_indexed_call(c) for c in page.calls],
                                      total=page.total or 0, offset=page.offset, limit=page.limit)

    def list_audit(self, request: admin_pb2.AuditRequest) -> admin_pb2.AuditList:
        from callindex.audit import AuditTrail
        from callindex.db import IndexUnavailable
        from callindex.query import QueryError, parse_when
        limit = request.limit or 100
        if limit > 1000:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"limit {limit}: at most 1000")
        try:
            since = parse_when(_opt(request, "since"))
        except QueryError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        trail = AuditTrail(self._index())
        try:
            entries = trail.entries(since, limit, request.offset, _opt(request, "recording_id"))
            checked, broken = trail.verify()
        except IndexUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        out = admin_pb2.AuditList(checked=checked, broken_at=broken or 0)
        for e in entries:
            d = e.to_dict()
            out.entries.append(admin_pb2.AuditEntry(
                seq=e.seq, at=d["at"] or "", actor=e.actor, role=e.role, action=e.action,
                recording_id=e.recording_id or "", address=e.address,
                detail_json=json.dumps(e.detail, sort_keys=True)))
        return out


def _below_encryption(store: Any) -> Any:
    """The store under the indexing and encrypting wrappers (what is really stored)."""
    from callindex.indexer import IndexingStore
    from storage.encryption import EncryptingStore
    while isinstance(store, (IndexingStore, EncryptingStore)):
        store = store.target
    return store


def _outcomes(found) -> admin_pb2.LifecycleResult:
    return admin_pb2.LifecycleResult(outcomes=[admin_pb2.LifecycleOutcome(
        recording_id=o.recording_id, done=o.done, what=o.what, reason=o.reason) for o in found])


class LifecycleAdmin:
    """Hold, erase and verify over the Admin API (issue #15), through the
    controller's own store stack (so hold.json is signed, the outbox emptied)."""

    def __init__(self, index_admin: IndexAdmin, store: Any, verify_keys: Any = None) -> None:
        self.ia = index_admin
        self.store = store
        self.verify_keys = verify_keys      # callable -> {key_id: VerifyKey} or None

    def _who(self, peer: PeerIdentity | None, address: str):
        from callindex.lifecycle import Who
        return Who(peer.name if peer is not None else "(plain text)", peer.role if peer is not None else "",
                   address)

    def _ids_allowed(self, index, ids: list[str], peer: PeerIdentity | None) -> list[str]:
        """Ids a limited certificate may touch (the others are refused as not found)."""
        if self.ia.limited(peer) is None:
            return list(ids)
        keep = []
        for rid in ids:
            row = index.get(rid)
            if row is not None and self.ia.may_see(peer, row):
                keep.append(rid)
        return keep

    def hold(self, request: admin_pb2.HoldRequest, peer: PeerIdentity | None, address: str):
        from callindex.audit import AuditTrail
        from callindex.db import IndexUnavailable
        from callindex.lifecycle import hold, release
        from callindex.query import CallQuery, QueryError, parse_when
        index = self.ia._index()
        if not request.ids and not request.HasField("number"):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "give recording ids or a number")
        query = None
        try:
            if request.HasField("number"):
                query = CallQuery(number=request.number, match="exact",
                                  since_us=parse_when(_opt(request, "since")),
                                  until_us=parse_when(_opt(request, "until")),
                                  allowed=self.ia.limited(peer), limit=1000)
        except QueryError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        ids = self._ids_allowed(index, list(request.ids), peer)
        fn = release if request.release else hold
        try:
            found = fn(self.store, index, AuditTrail(index), self._who(peer, address), ids=ids,
                       query=query, reason=request.reason)
        except IndexUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        refused = [r for r in request.ids if r not in ids]
        from callindex.lifecycle import Outcome
        found += [Outcome(r, "", False, "not found", "not a call of this certificate's numbers")
                  for r in refused]
        return _outcomes(found)

    def erase(self, request: admin_pb2.EraseRequest, peer: PeerIdentity | None, address: str):
        from callindex.audit import AuditTrail
        from callindex.db import IndexUnavailable
        from callindex.lifecycle import Outcome, erase
        index = self.ia._index()
        if not request.ids and not request.HasField("number"):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "give recording ids or a number")
        number = _opt(request, "number")
        pats = self.ia.limited(peer)
        if number is not None and pats is not None:
            from callindex.numbers import party_matches
            if not party_matches(pats, f"tel:{number}"):
                raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                              f"number {number}: not among this certificate's numbers")
        ids = self._ids_allowed(index, list(request.ids), peer)
        try:
            found = erase(self.store, index, AuditTrail(index), self._who(peer, address), ids=ids,
                          number=number, reason=request.reason)
        except IndexUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        found += [Outcome(r, "", False, "not found", "not a call of this certificate's numbers")
                  for r in request.ids if r not in ids]
        return _outcomes(found)

    def verify(self, request: admin_pb2.VerifyRequest, peer: PeerIdentity | None, address: str):
        from storage.manifest import verify_recording, verify_since
        if self.ia.limited(peer) is not None:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, "verification needs an operator certificate "
                          "without number limits")
        keys = self.verify_keys() if self.verify_keys is not None else None
        if not keys:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          "this controller signs nothing (spanrec controller --signing-key-file)")
        checks = []
        store = _below_encryption(self.store)    # manifests hash what is stored: ciphertext
        if request.HasField("since"):
            from callindex.query import QueryError, parse_when
            try:
                parse_when(request.since)
            except QueryError as exc:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            for prefix, res in verify_since(store, keys, request.since[:10]):
                checks.append((prefix.rsplit("/", 1)[-1], res))
        index = self.ia.indexer.index if self.ia.indexer is not None else None
        for rid in request.ids:
            row = index.get(rid) if index is not None else None
            if row is not None:
                prefix = row["prefix"]
            else:
                from storage.layout import prefix_of_id
                prefix = prefix_of_id(rid)
                if prefix is None:
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid recording id {rid!r}")
            checks.append((rid, verify_recording(store, prefix, keys)))
        self.ia.audit(peer, address, "verify", detail={"ids": list(request.ids)[:50],
                                                      "since": _opt(request, "since")})
        out = admin_pb2.VerifyResult(checked=len(checks), failed=sum(1 for _, r in checks if not r.ok))
        for rid, r in checks:
            out.checks.append(admin_pb2.RecordingCheck(recording_id=rid, ok=r.ok, problems=r.problems,
                                                      key_id=r.key_id or ""))
        return out
