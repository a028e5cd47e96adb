"""`spanrec web`: the web player (issue #14), a FastAPI application over the
call index (callindex/) and the recording store (storage/).

Pages: sign-in; calls (the index's search, limited to what the user may see);
one call (metadata, stereo player with a waveform, DTMF and hold on the
timeline, per-stream quality, the SIP ladder loaded after the page, downloads);
active calls (from a controller's Admin API when one is configured); the audit
trail (auditors, admins). Audio and files are streamed with byte ranges
(web/streaming.py). Every search, call view, playback start, download and
sign-in is appended to the audit trail; a request the trail cannot record is
refused. No script is inline and nothing is loaded from elsewhere: the
Content-Security-Policy says so.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from callindex.audit import AuditTrail
from callindex.db import CallIndex, IndexUnavailable
from callindex.query import CallQuery, QueryError, parse_when
from callindex.users import User, Users
from storage.base import StorageError
from storage.layout import CALL_JSON, CALL_PCAP
from web.access import may_see_audit, may_see_call
from web.auth import SESSION_MAX_AGE_S, check_csrf, csrf_token, session_user
from web.streaming import file_response

log = logging.getLogger("spanrec.web")

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")

_FILTERS = ("number", "from_number", "to_number", "match", "since", "until", "status", "call_id",
            "codec", "site", "min_duration", "mos_below", "has_dtmf", "has_hold", "sort", "page")


@dataclass
class WebConfig:
    index: CallIndex
    store: Any                           # storage.base.RecordingStore
    secret: str
    secure_cookies: bool = True
    active_calls: Callable[[], list[dict]] | None = None   # a controller's active calls
    page_size: int = 50
    ladder_cache: dict = field(default_factory=dict)
    verify_keys: dict = field(default_factory=dict)     # key id -> storage.manifest.VerifyKey


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(cfg: WebConfig) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, title="spanrec")
    app.add_middleware(SessionMiddleware, secret_key=cfg.secret, session_cookie="spanrec_session",
                       max_age=SESSION_MAX_AGE_S, same_site="strict", https_only=cfg.secure_cookies)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    users = Users(cfg.index)
    trail = AuditTrail(cfg.index)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        return resp

    @app.exception_handler(_Refused)
    def refused(request: Request, exc: _Refused):
        try:
            user = session_user(request, users)
        except IndexUnavailable:
            user = None
        return HTMLResponse(templates.get_template("error.html").render(
            request=request, status=exc.status, message=str(exc), user=user, csrf=csrf_token(request)),
            status_code=exc.status)

    @app.exception_handler(IndexUnavailable)
    async def index_down(request: Request, exc: IndexUnavailable):
        log.error("call index unavailable", extra={"error": str(exc)})
        return HTMLResponse(templates.get_template("error.html").render(
            request=request, status=503, message="The call index is unavailable; try again shortly.",
            user=None), status_code=503)

    def render(request: Request, name: str, user: User | None, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"user": user, "csrf": csrf_token(request), **ctx})

    def address(request: Request) -> str:
        return f"{request.client.host}:{request.client.port}" if request.client else ""

    def audit(request: Request, user: User, action: str, recording_id: str | None = None,
              detail: dict | None = None) -> None:
        trail.append(user.name, user.role, action, recording_id=recording_id, address=address(request),
                     detail=detail)

    def need_user(request: Request) -> User:
        user = session_user(request, users)
        if user is None:
            raise _SignIn()
        return user

    class _SignIn(Exception):
        pass

    @app.exception_handler(_SignIn)
    async def sign_in_first(request: Request, exc: _SignIn):
        return RedirectResponse("/login", status_code=303)

    def load_call(user: User, recording_id: str) -> tuple[dict, dict]:
        """(index row, call.json) of a call the user may see; _Refused otherwise."""
        if not user.sees_calls:
            raise _Refused(403, "Your role sees the audit trail only.")
        row = cfg.index.get(recording_id)
        if row is None:
            raise _Refused(404, f"No recording {recording_id} in the index.")
        if not may_see_call(user, row):
            raise _Refused(403, "This call is not among the numbers you may see.")
        try:
            meta = json.loads(cfg.store.get(row["prefix"], CALL_JSON))
        except (StorageError, ValueError) as exc:
            raise _Refused(502, f"Recording {recording_id} cannot be read from storage: {exc}") from None
        if not may_see_call(user, meta):
            raise _Refused(403, "This call is not among the numbers you may see.")
        return row, meta

    # -- sign-in -------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return render(request, "login.html", None, error=None)

    @app.post("/login")
    def login(request: Request, username: str = Form(...), password: str = Form(...),
              csrf: str = Form("")):
        if not check_csrf(request, csrf):
            raise _Refused(400, "The form expired; reload the sign-in page.")
        user = users.authenticate(username, password)
        if user is None:
            trail.append(username[:128], "", "sign-in-failed", address=address(request))
            return render(request, "login.html", None, error="Wrong user name or password.")
        request.session.clear()                   # a new session: no fixation
        request.session["user"] = user.name
        csrf_token(request)
        audit(request, user, "sign-in")
        return RedirectResponse("/audit" if user.role == "auditor" else "/", status_code=303)

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")):
        user = session_user(request, users)
        if user is not None and check_csrf(request, csrf):
            audit(request, user, "sign-out")
            request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # -- calls -------------------------------------------------------------------
    def query_from(params: dict[str, str], user: User) -> CallQuery:
        def num(name: str) -> float | None:
            v = params.get(name)
            return float(v) if v not in (None, "") else None

        def tri(name: str) -> bool | None:
            v = params.get(name)
            return {"yes": True, "no": False}.get(v or "")
        page = max(1, int(params.get("page") or 1))
        return CallQuery(
            since_us=parse_when(params.get("since") or None), until_us=parse_when(params.get("until") or None),
            number=params.get("number") or None, from_number=params.get("from_number") or None,
            to_number=params.get("to_number") or None, match=params.get("match") or "substring",
            status=params.get("status") or None, call_id=params.get("call_id") or None,
            codec=params.get("codec") or None, site=params.get("site") or None,
            min_duration_s=num("min_duration"), mos_below=num("mos_below"),
            has_dtmf=tri("has_dtmf"), has_hold=tri("has_hold"),
            sort=params.get("sort") or "-started", limit=cfg.page_size,
            offset=(page - 1) * cfg.page_size, allowed=user.allowed())

    @app.get("/", response_class=HTMLResponse)
    def calls_page(request: Request):
        user = need_user(request)
        if not user.sees_calls:
            return RedirectResponse("/audit", status_code=303)
        params = {k: v for k, v in request.query_params.items() if k in _FILTERS}
        try:
            q = query_from(params, user)
        except (QueryError, ValueError) as exc:
            return render(request, "calls.html", user, calls=[], total=0, params=params, error=str(exc),
                          page=1, pages=1, query="")
        audit(request, user, "search", detail={k: v for k, v in q.to_dict().items()
                                               if k not in ("allowed", "limit")})
        result = cfg.index.search(q)
        page = q.offset // cfg.page_size + 1
        pages = max(1, -(-(result.total or 0) // cfg.page_size))
        base = {k: v for k, v in params.items() if k != "page" and v}
        return render(request, "calls.html", user, calls=result.calls, total=result.total, params=params,
                      error=None, page=page, pages=pages,
                      query="&".join(f"{k}={v}" for k, v in base.items()))

    @app.get("/calls/{recording_id}", response_class=HTMLResponse)
    def call_page(request: Request, recording_id: str):
        user = need_user(request)
        row, meta = load_call(user, recording_id)
        audit(request, user, "view", recording_id)
        files = _files(cfg.store, row["prefix"], meta)
        verified = None
        if cfg.verify_keys:          # issue #15: does the signed manifest still match?
            from storage.manifest import verify_recording
            verified = verify_recording(cfg.store if not hasattr(cfg.store, "keyring") else cfg.store.target,
                                        row["prefix"], cfg.verify_keys)
        return render(request, "call.html", user, row=row, meta=meta, files=files, verified=verified,
                      player=json.dumps(_player_data(meta, recording_id, files)),
                      streams=meta.get("streams") or [])

    @app.get("/calls/{recording_id}/audio")
    def audio(request: Request, recording_id: str):
        user = need_user(request)
        row, meta = load_call(user, recording_id)
        name = (meta.get("audio") or {}).get("file")
        if not name:
            raise _Refused(404, "This recording has no audio.")
        size = _size(cfg.store, row["prefix"], name)
        rng = request.headers.get("range")
        if not rng or rng.strip().startswith("bytes=0-"):
            audit(request, user, "play", recording_id, {"file": name})     # a playback starts
        return _stream(cfg.store, row["prefix"], name, size, rng)

    @app.get("/calls/{recording_id}/files/{name}")
    def download(request: Request, recording_id: str, name: str):
        user = need_user(request)
        row, meta = load_call(user, recording_id)
        if name not in _files(cfg.store, row["prefix"], meta):
            raise _Refused(404, f"No file {name} in this recording.")
        size = _size(cfg.store, row["prefix"], name)
        rng = request.headers.get("range")
        if not rng or rng.strip().startswith("bytes=0-"):
            audit(request, user, "download", recording_id, {"file": name})
        return _stream(cfg.store, row["prefix"], name, size, rng, download=True)

    @app.get("/calls/{recording_id}/peaks")
    def peaks(request: Request, recording_id: str, n: int = 800):
        from web.peaks import PeaksError, wav_peaks
        user = need_user(request)
        row, meta = load_call(user, recording_id)
        name = (meta.get("audio") or {}).get("file")
        if not name:
            return JSONResponse({"error": "no audio"}, status_code=404)
        size = _size(cfg.store, row["prefix"], name)
        try:
            data = wav_peaks(lambda a, k: cfg.store.get_range(row["prefix"], name, a, k), size, n)
        except PeaksError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(data, headers={"Cache-Control": "private, max-age=300"})

    @app.get("/calls/{recording_id}/ladder", response_class=HTMLResponse)
    def ladder_fragment(request: Request, recording_id: str):
        from web.ladder import LadderError, ladder
        user = need_user(request)
        row, meta = load_call(user, recording_id)
        key = (recording_id, row.get("prefix"), meta.get("pcap_packets"), meta.get("late_files") and
               len(meta["late_files"]))
        lad = cfg.ladder_cache.get(key)
        if lad is None:
            try:
                lad = ladder(cfg.store.get(row["prefix"], CALL_PCAP))
            except (StorageError, LadderError) as exc:
                return HTMLResponse(f'<p class="note">No SIP ladder: {_esc(str(exc))}</p>')
            if len(cfg.ladder_cache) > 64:
                cfg.ladder_cache.clear()
            cfg.ladder_cache[key] = lad
        return templates.TemplateResponse(request, "ladder.html", {"ladder": lad, "call_ids": meta.get("call_ids") or []})

    # -- active calls, audit -------------------------------------------------------
    @app.get("/active", response_class=HTMLResponse)
    def active(request: Request):
        user = need_user(request)
        if not user.sees_calls:
            raise _Refused(403, "Your role sees the audit trail only.")
        if cfg.active_calls is None:
            return render(request, "active.html", user, calls=None, error="No controller is configured "
                          "(spanrec web --controller HOST:PORT).")
        try:
            found = [c for c in cfg.active_calls() if may_see_call(user, c)]
        except Exception as exc:  # noqa: BLE001 - the controller may be away
            return render(request, "active.html", user, calls=None, error=f"Controller unreachable: {exc}")
        return render(request, "active.html", user, calls=found, error=None)

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, page: int = 1, recording: str | None = None):
        user = need_user(request)
        if not may_see_audit(user):
            raise _Refused(403, "The audit trail is for auditors.")
        per = 100
        entries = trail.entries(None, per, (max(page, 1) - 1) * per, recording or None)
        checked, broken = trail.verify()
        return render(request, "audit.html", user, entries=[e.to_dict() for e in entries],
                      checked=checked, broken=broken, page=max(page, 1), recording=recording or "")

    return app


def _esc(s: str) -> str:
    import html
    return html.escape(s)


def _stream(store, prefix: str, name: str, size: int, rng: str | None, download: bool = False):
    """file_response; a file that cannot be read is an error page, never a
    broken 200 (e.g. encrypted under a key this player does not have)."""
    try:
        return file_response(store, prefix, name, size, rng, download=download)
    except StorageError as exc:
        raise _Refused(500, f"The file cannot be read: {exc}") from None


def _size(store, prefix: str, name: str) -> int:
    try:
        return store.size(prefix, name)
    except StorageError as exc:
        raise _Refused(404, str(exc)) from None


def _files(store, prefix: str, meta: dict) -> list[str]:
    try:
        found = store.list_files(prefix)     # every file, manifest.json and hold.json too
    except (StorageError, AttributeError):
        found = None
    if found:
        return found
    names = [CALL_JSON]
    audio = (meta.get("audio") or {}).get("file")
    if audio:
        names.append(audio)
    if meta.get("pcap"):
        names.append(meta["pcap"])
    names += list(meta.get("late_files") or [])
    return names


def _iso(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _player_data(meta: dict, recording_id: str, files: list[str]) -> dict:
    """What player.js needs: the audio URL, where audio t=0 is in the call, the marks."""
    audio = meta.get("audio") or {}
    started = _iso(meta.get("started_at"))
    origin = None       # call time (s after started_at) of the audio file's first sample
    for side in (audio.get("sources") or {}).values():
        for seg in (side or {}).get("segments") or []:
            t = _iso(seg.get("start"))
            if t is not None and started is not None and seg.get("offset_s") is not None:
                o = (t - started).total_seconds() - seg["offset_s"]
                origin = o if origin is None else min(origin, o)
    origin = origin or 0.0
    marks = [{"kind": "dtmf", "at": round(d.get("at_s", 0) - origin, 3), "label": str(d.get("digit", "")),
              "direction": d.get("direction", "")} for d in meta.get("dtmf") or []]
    marks += [{"kind": "hold", "at": round(h.get("start_s", 0) - origin, 3),
               "end": round(h.get("end_s", h.get("start_s", 0)) - origin, 3), "label": "hold",
               "direction": h.get("side", h.get("direction", ""))} for h in meta.get("hold") or []]
    return {"id": recording_id, "audio": f"/calls/{recording_id}/audio" if audio.get("file") else None,
            "peaks": f"/calls/{recording_id}/peaks" if audio.get("file") == "audio.wav" else None,
            "ladder": f"/calls/{recording_id}/ladder", "marks": marks,
            "channels": ["caller", "callee"]}
