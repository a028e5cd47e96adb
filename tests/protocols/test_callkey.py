"""Routing keys of SIP messages (protocols/callkey.py): every message of a call,
and a B2BUA's legs that name each other, get one key."""
from __future__ import annotations

from protocols.callkey import RouteTable, media_key
from protocols.sip import parse_sip


def _msg(first: str, call_id: str, extra: str = "") -> object:
    text = (f"{first}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n"
            f"To: <sip:b@x>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n")
    return parse_sip(text.encode())


def test_dialog_and_named_legs_share_a_key() -> None:
    t = RouteTable()
    assert t.key(_msg("INVITE sip:b@x SIP/2.0", "leg1")) == "leg1"
    assert t.key(_msg("INVITE sip:b@y SIP/2.0", "leg2", "X-Call-ID: leg1\r\n")) == "leg1"
    # a third leg naming the second goes where the second went
    assert t.key(_msg("INVITE sip:b@z SIP/2.0", "leg3", "X-CID: leg2\r\n")) == "leg1"
    assert t.key(_msg("BYE sip:b@y SIP/2.0", "leg2")) == "leg1"      # names nothing: sticky
    assert t.key(_msg("SIP/2.0 200 OK", "leg3")) == "leg1"


def test_child_seen_first_and_other_leg_headers() -> None:
    t = RouteTable(leg_headers=("X-Orig-Call",))
    assert t.key(_msg("INVITE sip:b@y SIP/2.0", "child", "X-Orig-Call: parent\r\n")) == "parent"
    assert t.key(_msg("INVITE sip:b@x SIP/2.0", "parent")) == "parent"
    # X-Call-ID is not a leg header here: its own Call-ID
    assert t.key(_msg("INVITE sip:b@x SIP/2.0", "other", "X-Call-ID: parent\r\n")) == "other"
    # a header naming its own Call-ID names nothing
    assert RouteTable().key(_msg("INVITE sip:b@x SIP/2.0", "self", "X-Call-ID: self\r\n")) == "self"


def test_session_id_and_icid_are_not_routing_keys() -> None:
    """A proxy may add them half-way: the same Call-ID before and after it must agree."""
    a, b = RouteTable(), RouteTable()
    plain = _msg("INVITE sip:b@x SIP/2.0", "c1")
    added = _msg("INVITE sip:b@x SIP/2.0", "c1", "Session-ID: ab" + "0" * 30 + "\r\n"
                 "P-Charging-Vector: icid-value=77\r\n")
    assert a.key(plain) == b.key(added) == "c1"


def test_table_is_bounded() -> None:
    t = RouteTable(max_entries=10)
    for i in range(100):
        t.key(_msg("INVITE sip:b@x SIP/2.0", f"c{i}"))
    assert len(t) == 10


def test_media_key_is_direction_free() -> None:
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    assert media_key(a, 4000, b, 5000) == media_key(b, 5000, a, 4000)
    assert media_key(a, 4000, b, 5000) != media_key(a, 4002, b, 5000)
    assert media_key(a, 4001, b, 5001) == media_key(b, 5000, a, 4000)     # its RTCP goes with it


def _invite_sdp(call_id: str, origin: str, extra: str = "") -> object:
    body = f"v=0\r\no={origin} IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    text = (f"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n"
            f"To: <sip:b@x>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n{extra}Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    return parse_sip(text.encode())


def test_sdp_origin_is_not_a_routing_key() -> None:
    """Only the sensors that saw an earlier INVITE know its origin (and sipp and many
    phones reuse one origin for every call): keying by it would send one dialog to
    two shards from two sensors. Each INVITE goes by its own Call-ID."""
    a, b = RouteTable(), RouteTable()
    assert a.key(_invite_sdp("leg-a", "- 191 1228500736")) == "leg-a"
    assert a.key(_invite_sdp("leg-b", "- 191 1228500736")) == "leg-b"
    assert b.key(_invite_sdp("leg-b", "- 191 1228500736")) == "leg-b"        # the other sensor agrees
    assert a.key(_invite_sdp("leg-c", "- 191 1228500736", "X-Call-ID: leg-a\r\n")) == "leg-a"
