"""The web player's pages over real recordings, through the ASGI app: who may
see what, sign-in with CSRF, byte ranges equal to the stored bytes, and every
step in the audit trail."""
from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from callindex.audit import AuditTrail
from callindex.db import open_index
from storage.local import LocalStore
from tests.web.conftest import PASSWORDS, folder_of
from web.app import WebConfig, create_app


@pytest.fixture
def app(web_lab):
    index = open_index(web_lab.index_url)
    yield create_app(WebConfig(index=index, store=LocalStore(web_lab.out), secret="k" * 40,
                               secure_cookies=False)), index
    index.close()


def signed_in(app, name: str) -> TestClient:
    c = TestClient(app)
    tok = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": name, "password": PASSWORDS[name], "csrf": tok})
    assert r.status_code == 200 and "Sign out" in r.text, r.text[:500]
    return c


def ids(html: str) -> set[str]:
    return set(re.findall(r'data-id="([^"]+)"', html))


def calls_by_caller(web_lab) -> dict[str, str]:
    out = {}
    for cj in web_lab.out.rglob("call.json"):
        meta = json.loads(cj.read_text())
        out[meta["from"]] = meta["id"]
    return out


def test_pages_need_a_session(app):
    a, _ = app
    c = TestClient(a)
    for path in ("/", "/audit", "/active", "/calls/x", "/calls/x/audio"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path


def test_sign_in_needs_the_forms_csrf_token_and_the_right_password(app):
    a, index = app
    c = TestClient(a)
    c.get("/login")
    r = c.post("/login", data={"username": "ada", "password": PASSWORDS["ada"], "csrf": "forged"})
    assert r.status_code == 400
    tok = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": "ada", "password": "wrong", "csrf": tok})
    assert "Wrong user name or password" in r.text
    assert AuditTrail(index).entries(limit=1)[0].action == "sign-in-failed"


def test_roles_see_their_calls(app, web_lab):
    a, _ = app
    by_caller = calls_by_caller(web_lab)
    mine = by_caller["sip:10001@10.1.0.2"]
    other = by_caller["sip:10000@10.1.0.1"]
    every = {json.loads(cj.read_text())["id"] for cj in web_lab.out.rglob("call.json")}
    admin = signed_in(a, "ada")
    assert ids(admin.get("/").text) == every
    sup = signed_in(a, "sam")
    assert ids(sup.get("/").text) == {mine, other}           # 1000* : both sample calls
    lee = signed_in(a, "lee")
    assert ids(lee.get("/").text) == {mine}
    assert lee.get(f"/calls/{other}").status_code == 403
    assert lee.get(f"/calls/{other}/audio").status_code == 403
    assert lee.get(f"/calls/{other}/files/call.pcap").status_code == 403
    assert lee.get(f"/calls/{mine}").status_code == 200
    aud = signed_in(a, "aud")
    assert aud.get("/", follow_redirects=False).headers["location"] == "/audit"
    assert aud.get(f"/calls/{mine}").status_code == 403
    assert lee.get("/audit").status_code == 403


def test_audio_and_files_come_in_ranges_equal_to_the_stored_bytes(app, web_lab):
    a, _ = app
    c = signed_in(a, "ada")
    rid = calls_by_caller(web_lab)["sip:10001@10.1.0.2"]
    wav = (folder_of(web_lab.out, rid) / "audio.wav").read_bytes()
    for rng, part in (("bytes=0-99", wav[:100]), ("bytes=1000-", wav[1000:]), ("bytes=-10", wav[-10:]),
                      (f"bytes={len(wav) - 1}-{len(wav) + 50}", wav[-1:])):
        r = c.get(f"/calls/{rid}/audio", headers={"Range": rng})
        assert r.status_code == 206 and r.content == part, rng
        assert r.headers["content-range"].endswith(f"/{len(wav)}")
    assert c.get(f"/calls/{rid}/audio", headers={"Range": f"bytes={len(wav)}-"}).status_code == 416
    whole = c.get(f"/calls/{rid}/audio")
    assert whole.status_code == 200 and whole.content == wav and whole.headers["accept-ranges"] == "bytes"
    for name in ("call.pcap", "call.json"):
        r = c.get(f"/calls/{rid}/files/{name}")
        assert r.content == (folder_of(web_lab.out, rid) / name).read_bytes()
        assert "attachment" in r.headers["content-disposition"]
    assert c.get(f"/calls/{rid}/files/../../index.sqlite").status_code == 404


def test_every_step_is_audited(app, web_lab):
    a, index = app
    rid = calls_by_caller(web_lab)["sip:10001@10.1.0.2"]
    before = AuditTrail(index).entries(limit=1)[0].seq
    c = signed_in(a, "sam")
    c.get("/?number=10001")
    c.get(f"/calls/{rid}")
    c.get(f"/calls/{rid}/audio", headers={"Range": "bytes=0-"})
    c.get(f"/calls/{rid}/audio", headers={"Range": "bytes=5000-"})    # seeking: not a new playback
    c.get(f"/calls/{rid}/files/call.pcap")
    tok = re.search(r'name="csrf" value="([^"]+)"', c.get("/").text).group(1)
    c.post("/logout", data={"csrf": tok})
    trail = AuditTrail(index)
    new = [e for e in reversed(trail.entries(limit=50)) if e.seq > before]
    got = [(e.actor, e.action, e.recording_id) for e in new]
    assert got == [("sam", "sign-in", None), ("sam", "search", None), ("sam", "search", None),
                   ("sam", "view", rid), ("sam", "play", rid), ("sam", "download", rid),
                   ("sam", "search", None), ("sam", "sign-out", None)]
    assert new[2].detail.get("number") == "10001"
    assert trail.verify()[1] is None


def test_security_headers(app):
    a, _ = app
    r = TestClient(a).get("/login")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text                     # no inline script anywhere


def test_active_calls_are_filtered_by_role(web_lab):
    """The controller's active calls (here a function standing in for its Admin
    API answer) pass the same access rule as stored calls."""
    index = open_index(web_lab.index_url)
    calls = [{"id": "a1", "from": "sip:10001@pbx", "to": "sip:555@x", "status": "answered",
              "started_at": "2024-01-15T10:00:00Z", "packets": 10},
             {"id": "a2", "from": "sip:777@pbx", "to": "sip:888@x", "status": "ringing",
              "started_at": "2024-01-15T10:00:01Z", "packets": 3}]
    a = create_app(WebConfig(index=index, store=LocalStore(web_lab.out), secret="k" * 40,
                             secure_cookies=False, active_calls=lambda: calls))
    assert "sip:777@pbx" in signed_in(a, "ada").get("/active").text
    lee = signed_in(a, "lee").get("/active").text
    assert "sip:10001@pbx" in lee and "sip:777@pbx" not in lee and "1 active call(s)" in lee
    index.close()


def test_the_call_page_says_whether_the_recording_verifies(tmp_path):
    """Issue #15: signed and encrypted recordings play in the web player, and the
    call page says whether the files still match the signed manifest."""
    import subprocess
    import sys

    from storage.encryption import EncryptingStore, FileKeyring
    from storage.manifest import load_verify_key
    from tests.web.conftest import SAMPLE, spanrec
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "scripts/make-keys", "--out", str(keys)], check=True, capture_output=True)
    out = tmp_path / "rec"
    done = spanrec("record", str(SAMPLE), "--out", str(out), "--no-progress", "--signing-key-file",
                   str(keys / "signing.key"), "--encryption-key-file", str(keys / "kek.key"))
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{out / 'index.sqlite'}"
    assert spanrec("user", "add", "ada", "--role", "admin", "--index", url, stdin="admin-pass-1\n").returncode == 0
    index = open_index(url)
    key = load_verify_key(keys / "signing.pub")
    a = create_app(WebConfig(index=index, store=EncryptingStore(LocalStore(out), FileKeyring(keys / "kek.key")),
                             secret="k" * 40, secure_cookies=False, verify_keys={key.key_id: key}))
    c = signed_in(a, "ada")
    rid = sorted(ids(c.get("/").text))[0]
    page = c.get(f"/calls/{rid}").text
    assert "Verified: every file matches the signed manifest" in page
    wav = c.get(f"/calls/{rid}/audio", headers={"Range": "bytes=0-3"})
    assert wav.status_code == 206 and wav.content == b"RIFF"           # decrypted for the player
    whole = c.get(f"/calls/{rid}/audio").content
    # after a key rotation (new key first, old kept) the old recording still plays,
    # byte for byte; a player given only the new key cannot play it
    new_keys = tmp_path / "keys2"
    subprocess.run([sys.executable, "scripts/make-keys", "--out", str(new_keys)], check=True, capture_output=True)
    for ring, plays in ((FileKeyring(new_keys / "kek.key", keys / "kek.key"), True),
                        (FileKeyring(new_keys / "kek.key"), False)):
        other = create_app(WebConfig(index=index, store=EncryptingStore(LocalStore(out), ring),
                                     secret="k" * 40, secure_cookies=False, verify_keys={key.key_id: key}))
        got = TestClient(other, raise_server_exceptions=False)
        got.cookies.update(signed_in(other, "ada").cookies)
        resp = got.get(f"/calls/{rid}/audio")
        if plays:
            assert resp.status_code == 200 and resp.content == whole
        else:
            assert resp.status_code >= 400 and b"RIFF" not in resp.content
    stored = folder_of(out, rid) / "call.pcap"
    data = bytearray(stored.read_bytes())
    data[-5] ^= 0xFF
    stored.write_bytes(bytes(data))
    page = c.get(f"/calls/{rid}").text
    assert "Does not verify" in page and "call.pcap" in page
    index.close()
