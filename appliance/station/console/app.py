"""The console's web application (Starlette, served by uvicorn): pages, forms, the live feed.

Security model (docs/console.md):
- a session cookie (``__Host-`` prefix over TLS) that is HttpOnly, Secure and SameSite=Strict;
  only its SHA-256 is stored;
- every state-changing request is a POST carrying the session's CSRF token (form field
  ``csrf`` or header ``X-CSRF-Token``) and, when the browser sends one, a same-origin ``Origin``;
- a strict Content-Security-Policy: no inline script or style, nothing from another origin;
- every page and endpoint checks the role's permission on the server (a hidden button is a
  convenience, never the control), and every disclosure, claim, verdict, refusal and login
  failure is an audit record naming the user and the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from appliance.common.errors import InputError
from appliance.contracts.envelope import RENDITION_FULL, RENDITION_REDACTED, EnvelopeError
from appliance.station.console.auth import HOME, LoginGuard, allowed, hash_password
from appliance.station.console.custody import WrongPassword, unwrap_key
from appliance.station.console.feed import AlarmFeed, alarm_summary, console_alarm_pattern
from appliance.station.console.station_view import StationView
from appliance.station.console.store import (
    CONSOLE_ALARM_PREFIX,
    REASON_CODES,
    ROLES,
    VERDICTS,
    ConsoleStore,
    Session,
    WorkflowError,
)
from appliance.station.console.video import (
    ClipOpener,
    HeldVideo,
    NotPixelated,
    VideoVault,
    ranged_response,
)
from appliance.station.keys import StationKeyPaths

log = logging.getLogger("appliance.console")
HERE = Path(__file__).parent
SESSION_TTL_MS = 12 * 3600 * 1000
#: systemd passes the station's HPKE private key to the console as this credential (docs/console.md).
STATION_KEY_CREDENTIAL = "station-hpke.key"
MAX_REASON_CHARS = 500
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    # Referrer-Policy "no-referrer" would make the browser send "Origin: null" on form POSTs.
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin", "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}


class Forbidden(HTTPException):
    def __init__(self, detail: str = "not allowed for your role"):
        super().__init__(403, detail)


class SecurityHeaders(BaseHTTPMiddleware):
    def __init__(self, app, *, tls: bool):
        super().__init__(app)
        self.tls = tls

    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if self.tls:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response


class Console:
    """The console application: ``Console(...).app`` is the ASGI app for uvicorn."""

    def __init__(self, station_dir: str | Path, console_dir: str | Path, *, audit: Any,
                 tls: bool = False, stale_after_s: float = 120.0, poll_s: float = 0.05,
                 login_guard: dict[str, Any] | None = None, station_key: str | Path | None = None,
                 vault: VideoVault | None = None):
        self.station_dir = Path(station_dir)
        self.store = ConsoleStore(console_dir)
        self.view = StationView(station_dir, stale_after_s=stale_after_s)
        self.audit = audit
        self.tls = tls
        self.cookie_name = "__Host-console" if tls else "console"
        self.guard = LoginGuard(self.store, **(login_guard or {}))
        self.feed = AlarmFeed(self.view, self.store, poll_s=poll_s, on_stale=self._audit_stale,
                              on_tamper=self._audit_tamper)
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.templates.filters["utc"] = _utc
        self.opener = ClipOpener(self.view, station_key or default_station_key(station_dir))
        self.vault = vault or VideoVault()
        self.app = Starlette(
            routes=self._routes(), middleware=[Middleware(SecurityHeaders, tls=tls)],
            exception_handlers={HTTPException: self._http_error}, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        import asyncio

        self.feed.start()
        sweeper = asyncio.create_task(self._sweep_grants())
        try:
            yield
        finally:
            sweeper.cancel()
            await self.feed.stop()
            for held in self.vault.expire_all():
                self._audit_grant_end(held, "console_stopped")

    async def _sweep_grants(self) -> None:
        """Drops full-video grants whose time is up, each an audit record (a bounded loop per tick)."""
        import asyncio

        while True:
            await asyncio.sleep(5.0)
            self.expire_grants()

    def expire_grants(self) -> int:
        expired = self.vault.expire()
        for held in expired:
            self._audit_grant_end(held, "expired")
        return len(expired)

    def _audit_grant_end(self, held: HeldVideo, why: str) -> None:
        self._audit("console.full_video_grant_ended", user=held.user, alarm_id=held.alarm_id,
                    request=held.request_id, approved_by=held.approved_by, views=held.views, why=why)

    def close(self) -> None:
        self.store.close()
        self.view.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _routes(self) -> list:
        return [
            Route("/", self.monitor), Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]), Route("/events", self.events),
            Route("/api/alarms", self.api_alarms), Route("/api/alarms/{alarm_id:path}/skeletons", self.api_skeletons),
            Route("/api/alarms/{alarm_id:path}/outlines", self.api_outlines),
            Route("/alarms/{alarm_id:path}/video", self.video_blurred),
            Route("/alarms/{alarm_id:path}/full-video", self.video_full),
            Route("/alarms/{alarm_id:path}/claim", self.claim, methods=["POST"]),
            Route("/alarms/{alarm_id:path}/close", self.close_alarm, methods=["POST"]),
            Route("/alarms/{alarm_id:path}/reveal", self.reveal, methods=["POST"]),
            Route("/alarms/{alarm_id:path}/request-full", self.request_full, methods=["POST"]),
            Route("/alarms/{alarm_id:path}", self.alarm_page),
            Route("/approvals", self.approvals), Route("/approvals/{request_id:int}", self.decide, methods=["POST"]),
            Route("/approvals/{request_id:int}/grant", self.open_grant, methods=["POST"]),
            Route("/devices", self.devices), Route("/dpo", self.dpo),
            Route("/admin/users", self.admin_users, methods=["GET", "POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def _audit(self, kind: str, **fields: Any) -> None:
        try:
            self.audit.append(kind, **fields)
        except Exception:   # the action already happened or was refused; never hide the failure
            log.exception("audit append failed for %s", kind)
            raise

    def _audit_stale(self, alarm_id: str, body: dict[str, Any]) -> None:
        self._audit("console.device_stale", alarm_id=alarm_id, device_id=body["device_id"],
                    silent_s=body["silent_s"])

    def _audit_tamper(self, alarm_id: str, body: dict[str, Any]) -> None:
        self._audit("console.device_tamper", alarm_id=alarm_id, device_id=body["device_id"], kinds=body["kinds"])

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)   # registered for HTTPException only
        if exc.status_code == 401:
            if request.url.path.startswith(("/api/", "/events")):
                return JSONResponse({"error": "login required"}, 401)
            return RedirectResponse("/login", 303)
        if request.url.path.startswith(("/api/", "/events")) or request.headers.get("accept") == "application/json":
            return JSONResponse({"error": exc.detail}, exc.status_code)
        session = self._session(request)
        return self._page("error.html", session, status=exc.status_code, code=exc.status_code, message=str(exc.detail))

    def _session(self, request: Request) -> Session | None:
        return self.store.session(request.cookies.get(self.cookie_name))

    def _require(self, request: Request, permission: str) -> Session:
        session = self._session(request)
        if session is None:
            raise HTTPException(401, "login required")
        if not allowed(session.role, permission):
            self._audit("console.refused", user=session.username, role=session.role, permission=permission,
                        path=request.url.path, reason="role")
            raise Forbidden()
        return session

    async def _form(self, request: Request, session: Session) -> dict[str, str]:
        """The POSTed form, after the CSRF and same-origin checks."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            self._audit("console.refused", user=session.username, path=request.url.path, reason="cross_origin")
            raise Forbidden("cross-origin request refused")
        form = await request.form()
        token = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
        if not secrets.compare_digest(token, session.csrf):
            self._audit("console.refused", user=session.username, path=request.url.path, reason="csrf")
            raise Forbidden("missing or wrong CSRF token (reload the page)")
        return {k: str(v) for k, v in form.items()}

    def _page(self, name: str, session: Session | None, *, status: int = 200, **ctx: Any) -> HTMLResponse:
        perms = {p: allowed(session.role, p) for p in ("monitor", "devices", "dpo", "users", "video.full.approve",
                                                        "alarm.claim", "alarm.close", "video.blurred",
                                                        "video.full.request")} if session else {}
        html = self.templates.get_template(name).render(session=session, can=perms, **ctx)
        return HTMLResponse(html, status)

    def _alarm_or_404(self, alarm_id: str) -> dict[str, Any]:
        if alarm_id.split(":", 1)[0] in CONSOLE_ALARM_PREFIX.values():
            for c in self.store.console_alarms():
                if c["alarm_id"] == alarm_id:
                    return {"alarm_id": alarm_id, "kind": c["kind"], "device_id": c["device_id"],
                            "pattern": console_alarm_pattern(c), "created_unix_ms": c["created_unix_ms"],
                            "body": c["body"], "place": self._places().get(c["device_id"], ""), "clip": False}
            raise HTTPException(404, f"no alarm {alarm_id}")
        alarm = self.view.alarm(alarm_id)
        if alarm is None:
            raise HTTPException(404, f"no alarm {alarm_id}")
        return {**alarm_summary(alarm), "body": alarm.body, "place": self._places().get(alarm.device_id, "")}

    def _places(self) -> dict[str, str]:
        """Device id -> place name (the description given at enrolment, e.g. "Paradeplatz north")."""
        return {d.device_id: d.description for d in self.view.devices()}

    # -- login ------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._page("login.html", None, error="")
        form = await request.form()
        username, password = str(form.get("username", ""))[:64], str(form.get("password", ""))[:1024]
        client = request.client.host if request.client else "?"
        result = await run_in_threadpool(self.guard.login, username, password, client)
        if not result.ok:
            self._audit("console.login_failed", user=username, client=client, reason=result.why)
            return self._page("login.html", None, status=401 if result.why != "rate_limited" else 429,
                              error="Login failed." if result.why not in ("locked", "locked_now", "rate_limited")
                              else "Too many attempts: try again later.")
        token, _ = self.store.new_session(username, SESSION_TTL_MS)
        self._audit("console.login", user=username, role=result.role, client=client)
        response = RedirectResponse(HOME[result.role], 303)
        response.set_cookie(self.cookie_name, token, max_age=SESSION_TTL_MS // 1000, path="/", secure=True,
                            httponly=True, samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        session = self._session(request)
        if session is not None:
            await self._form(request, session)
            self.store.end_session(request.cookies.get(self.cookie_name))
            self.vault.end_session(session.token_sha256)
            self._audit("console.logout", user=session.username)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(self.cookie_name, path="/", secure=True, httponly=True, samesite="strict")
        return response

    # -- the black monitor ------------------------------------------------------------------

    def _open_alarms(self) -> list[dict[str, Any]]:
        workflows = self.store.workflows()
        items = [alarm_summary(a) for a in self.view.alarms()]
        for c in self.store.console_alarms():
            items.append({"alarm_id": c["alarm_id"], "kind": c["kind"], "device_id": c["device_id"],
                          "pattern": console_alarm_pattern(c), "created_unix_ms": c["created_unix_ms"],
                          "received_unix_ms": c["created_unix_ms"], "profile": "", "confidence": None,
                          "has_skeletons": False, "clip": False})
        out = []
        places = self._places()
        for item in items:
            item["place"] = places.get(item["device_id"], "")
            wf = workflows.get(item["alarm_id"])
            if wf is not None and wf.state == "closed":
                continue
            item["state"] = wf.state if wf else "new"
            item["owner"] = wf.owner if wf else ""
            out.append(item)
        out.sort(key=lambda i: i["received_unix_ms"], reverse=True)
        return out

    async def monitor(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        if not allowed(session.role, "monitor"):
            return RedirectResponse(HOME[session.role], 303)
        return self._page("monitor.html", session, alarms=self._open_alarms())

    async def api_alarms(self, request: Request) -> Response:
        self._require(request, "alarm.view")
        return JSONResponse({"alarms": self._open_alarms()})

    async def events(self, request: Request) -> Response:
        session = self._require(request, "monitor")
        queue = self.feed.subscribe()
        if queue is None:
            raise HTTPException(503, "too many live pages open")

        async def stream():
            try:
                yield "retry: 1000\n\n"
                while session.expires_unix_ms > time.time() * 1000:
                    try:
                        event = await _wait(queue, 15.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is None:
                        break
                    yield f"event: {event['type']}\ndata: {json.dumps(event, sort_keys=True)}\n\n"
            finally:
                self.feed.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def alarm_page(self, request: Request) -> Response:
        session = self._require(request, "alarm.view")
        alarm_id = request.path_params["alarm_id"]
        alarm = self._alarm_or_404(alarm_id)
        wf = self.store.workflow(alarm_id)
        requests = self.store.disclosures(alarm_id=alarm_id)
        version = self.view.clip_version(alarm_id) if alarm.get("clip") else None
        grant = self.vault.granted(session.username, alarm_id) if allowed(session.role, "video.full.view") else None
        return self._page("alarm.html", session, alarm=alarm, wf=wf, verdicts=VERDICTS, reason_codes=REASON_CODES,
                          requests=requests, message=request.query_params.get("m", "")[:300],
                          explanation=_explanation_in_words(alarm["body"].get("explanation", {})),
                          clip_version=version, grant=grant,
                          revealed=version is not None and version >= 2 and allowed(session.role, "video.blurred")
                          and self.vault.revealed(session.token_sha256, alarm_id))

    async def api_skeletons(self, request: Request) -> Response:
        """Layer 1: the involved persons' skeletons (no pixels). Viewing it is audited."""
        session = self._require(request, "alarm.view")
        alarm_id = request.path_params["alarm_id"]
        alarm = self._alarm_or_404(alarm_id)
        skeletons = alarm["body"].get("skeletons")
        self._audit("station.view", operator=session.username, reason="alarm triage (skeleton layer)",
                    alarm_id=alarm_id, layer="skeletons")
        return JSONResponse({"alarm_id": alarm_id, "skeletons": skeletons,
                             "tracks": alarm["body"].get("tracks", [])})

    # -- workflow ---------------------------------------------------------------------------

    async def claim(self, request: Request) -> Response:
        session = self._require(request, "alarm.claim")
        form = await self._form(request, session)
        alarm_id = request.path_params["alarm_id"]
        self._alarm_or_404(alarm_id)
        take_over = form.get("take_over") == "1" and allowed(session.role, "alarm.take_over")
        try:
            wf = self.store.claim(alarm_id, session.username, take_over=take_over)
        except WorkflowError as exc:
            return self._redirect_alarm(alarm_id, str(exc), 409)
        self._audit("console.claim", user=session.username, alarm_id=alarm_id, take_over=take_over)
        self.feed.publish({"type": "workflow", "alarm_id": alarm_id, "state": wf.state, "owner": wf.owner})
        return self._redirect_alarm(alarm_id, f"claimed by {wf.owner}")

    async def close_alarm(self, request: Request) -> Response:
        session = self._require(request, "alarm.close")
        form = await self._form(request, session)
        alarm_id = request.path_params["alarm_id"]
        self._alarm_or_404(alarm_id)
        verdict, code, note = form.get("verdict", ""), form.get("reason_code", ""), form.get("note", "").strip()
        try:
            wf = self.store.close_alarm(alarm_id, session.username, verdict, code, note,
                                  supervisor=allowed(session.role, "alarm.take_over"))
        except WorkflowError as exc:
            return self._redirect_alarm(alarm_id, str(exc), 409)
        self._audit("console.verdict", user=session.username, alarm_id=alarm_id, verdict=verdict,
                    reason_code=code, note=note)
        self.feed.publish({"type": "workflow", "alarm_id": alarm_id, "state": wf.state, "owner": wf.owner})
        return RedirectResponse("/", 303)

    def _redirect_alarm(self, alarm_id: str, message: str, status: int = 303) -> Response:
        response = RedirectResponse(f"/alarms/{_quote(alarm_id)}?m={_quote(message)}", 303)
        if status != 303:
            response.headers["X-Console-Refused"] = str(status)
        return response

    # -- disclosure -------------------------------------------------------------------------

    def _reason(self, form: dict[str, str]) -> str:
        return " ".join(form.get("reason", "").split())[:MAX_REASON_CHARS]

    async def reveal(self, request: Request) -> Response:
        """Layer 2 (video with bystanders pixelated): needs a reason, which is audited."""
        session = self._require(request, "video.blurred")
        form = await self._form(request, session)
        alarm_id = request.path_params["alarm_id"]
        alarm = self._alarm_or_404(alarm_id)
        reason = self._reason(form)
        if len(reason) < 4:
            self._audit("console.refused", user=session.username, alarm_id=alarm_id, layer="video_blurred",
                        reason="no reason given")
            return self._redirect_alarm(alarm_id, "refused: revealing the video needs a reason", 400)
        version = self.view.clip_version(alarm_id) if alarm.get("clip") else None
        outcome = "unavailable" if version is None else "not_pixelated" if version < 2 else "shown"
        # Recorded before anything is decrypted (as the station's export does).
        self._audit("station.view", operator=session.username, reason=reason, alarm_id=alarm_id,
                    layer="video_blurred", outcome=outcome)
        if version is None:
            return self._redirect_alarm(alarm_id, "video layer: the clip has not arrived yet")
        if version < 2:
            return self._redirect_alarm(alarm_id, (
                "video layer: this clip was sealed by a box without bystander pixelation (envelope version 1), so "
                "it is not shown at this layer: request the full video below (a supervisor decides)"))
        try:
            await self._redacted(alarm_id)
        except (InputError, EnvelopeError, NotPixelated) as exc:
            self._audit("console.video_failed", user=session.username, alarm_id=alarm_id, layer="video_blurred",
                        error=getattr(exc, "reason", str(exc))[:300])
            return self._redirect_alarm(alarm_id, f"video layer: the clip could not be opened ({exc})", 500)
        self.vault.reveal(session.token_sha256, alarm_id)
        return self._redirect_alarm(alarm_id, "video with bystanders pixelated: outlines mark the involved persons")

    async def _redacted(self, alarm_id: str) -> HeldVideo:
        """The redacted rendition, from the cache or decrypted now (in memory) with the station key."""
        held = self.vault.cached(alarm_id)
        if held is None:
            def work() -> HeldVideo:
                return self.opener.open(alarm_id, self.opener.envelope(alarm_id), RENDITION_REDACTED)

            held = await run_in_threadpool(work)
            self.vault.cache(held)
        return held

    async def video_blurred(self, request: Request) -> Response:
        """Layer 2's bytes, for the session that revealed this alarm with a reason (Range requests)."""
        session = self._require(request, "video.blurred")
        alarm_id = request.path_params["alarm_id"]
        if not self.vault.revealed(session.token_sha256, alarm_id):
            self._audit("console.refused", user=session.username, alarm_id=alarm_id, layer="video_blurred",
                        path=request.url.path, reason="no_reveal")
            raise Forbidden("reveal the video with a reason first (in this login session)")
        try:
            held = await self._redacted(alarm_id)
        except (InputError, EnvelopeError, NotPixelated) as exc:
            raise HTTPException(409, f"the clip cannot be shown: {exc}") from None
        return self._stream(request, session, held, "video_blurred")

    async def video_full(self, request: Request) -> Response:
        """Layer 3's bytes: only the operator whose request a supervisor approved, while the grant lasts."""
        session = self._require(request, "video.full.view")
        alarm_id = request.path_params["alarm_id"]
        held = self.vault.granted(session.username, alarm_id)
        if held is None:
            self._audit("console.refused", user=session.username, alarm_id=alarm_id, layer="video_full",
                        path=request.url.path, reason="no_grant")
            raise Forbidden("no approved full video for you on this alarm (request it; a supervisor decides)")
        return self._stream(request, session, held, "video_full")

    def _stream(self, request: Request, session: Session, held: HeldVideo, layer: str) -> Response:
        range_header = request.headers.get("range")
        if not range_header or range_header.replace(" ", "").startswith("bytes=0-"):
            # A playback starts (the browser's first fetch); seeks within it are not each recorded.
            held.views += 1
            self._audit("station.view", operator=session.username, reason="playback", alarm_id=held.alarm_id,
                        layer=layer, request=held.request_id, bytes=held.size)
        return ranged_response(held, range_header)

    async def api_outlines(self, request: Request) -> Response:
        """Where the involved persons are, per frame (from the sealed metadata): the browser outlines them."""
        session = self._require(request, "video.blurred")
        alarm_id = request.path_params["alarm_id"]
        full = request.query_params.get("layer") == "full"
        held: HeldVideo | None
        if full:
            held = self.vault.granted(session.username, alarm_id) if allowed(session.role, "video.full.view") else None
        else:
            held = await self._redacted(alarm_id) if self.vault.revealed(session.token_sha256, alarm_id) else None
        if held is None:
            self._audit("console.refused", user=session.username, alarm_id=alarm_id, path=request.url.path,
                        layer="video_full" if full else "video_blurred", reason="no_grant" if full else "no_reveal")
            raise Forbidden("no video disclosed to you for this alarm")
        return JSONResponse({"alarm_id": alarm_id, "rendition": held.rendition, **held.outlines})

    async def request_full(self, request: Request) -> Response:
        session = self._require(request, "video.full.request")
        form = await self._form(request, session)
        alarm_id = request.path_params["alarm_id"]
        self._alarm_or_404(alarm_id)
        reason = self._reason(form)
        if len(reason) < 4:
            self._audit("console.refused", user=session.username, alarm_id=alarm_id, layer="video_full",
                        reason="no reason given")
            return self._redirect_alarm(alarm_id, "refused: a request for the full video needs a reason", 400)
        rid = self.store.request_full(alarm_id, session.username, reason)
        self._audit("console.full_video_requested", user=session.username, alarm_id=alarm_id, request=rid,
                    reason=reason)
        self.feed.publish({"type": "approval", "request": rid, "alarm_id": alarm_id})
        return self._redirect_alarm(alarm_id, f"request {rid} sent to a supervisor")

    async def approvals(self, request: Request) -> Response:
        session = self._require(request, "video.full.approve")
        decided = [r for r in self.store.disclosures()[-50:] if r["state"] != "pending"]
        for r in decided:
            r["granted"] = self.vault.granted(r["requested_by"], r["alarm_id"]) is not None
        return self._page("approvals.html", session, pending=self.store.disclosures(state="pending"),
                          decided=decided, wrap=self.store.wrap(session.username),
                          holders=[w.username for w in self.store.wraps()],
                          message=request.query_params.get("m", "")[:300])

    async def _confirm_password(self, request: Request, session: Session, password: str, rid: int) -> None:
        result = await run_in_threadpool(self.guard.reauthenticate, session.username, password)
        if not result.ok:
            self._audit("console.refused", user=session.username, request=rid, path=request.url.path,
                        reason=f"password_{result.why}")
            raise Forbidden("approving the full video needs your own password (it was wrong, or the account is locked)")

    async def decide(self, request: Request) -> Response:
        session = self._require(request, "video.full.approve")
        form = await self._form(request, session)
        rid = request.path_params["request_id"]
        reason = self._reason(form)
        approve = form.get("decision") == "approve"
        if len(reason) < 4:
            self._audit("console.refused", user=session.username, request=rid, reason="no reason given")
            raise HTTPException(400, "a decision on the full video needs a reason")
        pending = self.store.disclosure(rid)
        if pending is not None and pending["requested_by"] == session.username:
            self._audit("console.refused", user=session.username, request=rid, reason="four eyes")
            raise HTTPException(409, "four eyes: a request is decided by another person than its requester")
        if approve:
            await self._confirm_password(request, session, form.get("password", ""), rid)
        try:
            decided = self.store.decide(rid, session.username, approve, reason)
        except WorkflowError as exc:
            self._audit("console.refused", user=session.username, request=rid, reason=str(exc))
            raise HTTPException(409, str(exc)) from None
        self._audit("console.full_video_" + ("approved" if approve else "refused"), user=session.username,
                    request=rid, alarm_id=decided["alarm_id"], requested_by=decided["requested_by"], reason=reason)
        message = f"request {rid} refused"
        if approve:
            message = f"request {rid} approved: " + await self._grant(session, decided, form.get("password", ""))
        return RedirectResponse(f"/approvals?m={_quote(message)}", 303)

    async def open_grant(self, request: Request) -> Response:
        """Opens (again) the full video of an approved request: after the grant expired, the console
        restarted, or the clip arrived after the approval. A supervisor other than the requester."""
        session = self._require(request, "video.full.approve")
        form = await self._form(request, session)
        rid = request.path_params["request_id"]
        row = self.store.disclosure(rid)
        if row is None or row["state"] != "approved":
            raise HTTPException(409, f"no approved request {rid}")
        if row["requested_by"] == session.username:
            self._audit("console.refused", user=session.username, request=rid, reason="four eyes")
            raise HTTPException(409, "four eyes: the full video is opened by another person than its requester")
        await self._confirm_password(request, session, form.get("password", ""), rid)
        message = await self._grant(session, row, form.get("password", ""))
        return RedirectResponse(f"/approvals?m={_quote(f'request {rid}: ' + message)}", 303)

    async def _grant(self, session: Session, row: dict[str, Any], password: str) -> str:
        """Unwraps the evidence key with the supervisor's password, opens the full rendition of this
        one alarm in memory, drops the key, and holds the video for the requester (a grant)."""
        alarm_id, rid, requester = row["alarm_id"], int(row["id"]), row["requested_by"]
        version = self.view.clip_version(alarm_id)
        if version is None:
            return "the clip has not arrived yet; open the video here once it is stored"
        if version < 2:
            return ("this clip (envelope version 1) has no evidence rendition: it is exported at the station's "
                    "evidence workstation (the command is on the requester's alarm page)")
        wrap = self.store.wrap(session.username)
        if wrap is None:
            return ("you hold no wrap of the evidence key, so the console cannot open the video for you: a key "
                    "custodian runs 'appliance station console evidence-key wrap --user "
                    f"{session.username} --key EVIDENCE_KEY_FILE' with you (docs/console.md)")

        def work() -> HeldVideo:
            key = unwrap_key(wrap, password)
            try:
                return self.opener.open(alarm_id, self.opener.envelope(alarm_id), RENDITION_FULL, key)
            finally:
                del key     # the only reference: the evidence key lives for this one call

        try:
            held = await run_in_threadpool(work)
        except (WrongPassword, InputError, EnvelopeError, NotPixelated) as exc:
            self._audit("console.video_failed", user=session.username, alarm_id=alarm_id, layer="video_full",
                        request=rid, error=getattr(exc, "reason", str(exc))[:300])
            return f"the full video could not be opened ({exc})"
        for dropped in self.vault.grant(held, user=requester, request_id=rid, approved_by=session.username):
            self._audit_grant_end(dropped, "replaced_or_evicted")
        self._audit("console.full_video_granted", user=session.username, request=rid, alarm_id=alarm_id,
                    requested_by=requester, key_fingerprint=wrap.fingerprint, bytes=held.size,
                    expires_unix_ms=held.expires_unix_ms())
        # The requester's open alarm page shows the video at once (it reloads; no content in the event).
        self.feed.publish({"type": "grant", "alarm_id": alarm_id, "user": requester})
        return (f"the full video is open for {requester} until "
                f"{_utc(held.expires_unix_ms())} (the evidence key was used once and dropped)")

    # -- devices, officer, administrator ------------------------------------------------------

    async def devices(self, request: Request) -> Response:
        session = self._require(request, "devices")
        panel = [d.panel() for d in self.view.devices()]
        if request.headers.get("accept") == "application/json":
            return JSONResponse({"devices": panel})
        return self._page("devices.html", session, devices=panel, stale_after_s=self.view.stale_after_s)

    async def dpo(self, request: Request) -> Response:
        session = self._require(request, "dpo")
        stats = self.store.verdict_stats()
        retention = self.view.retention_summary()
        audit_info = {"path": str(getattr(self.audit, "path", "")), "records": getattr(self.audit, "count", None),
                      "head": getattr(self.audit, "head", "")}
        self._audit("console.dpo_view", user=session.username)
        return self._page("dpo.html", session, stats=stats, retention=retention, audit_info=audit_info,
                          alarms=len(self.view.alarms()))

    async def admin_users(self, request: Request) -> Response:
        session = self._require(request, "users")
        message = ""
        if request.method == "POST":
            form = await self._form(request, session)
            action, name = form.get("action", ""), form.get("username", "").strip()
            try:
                if action == "add":
                    role = form.get("role", "")
                    pw = await run_in_threadpool(hash_password, form.get("password", ""))
                    self.store.add_user(name, role, pw)
                    self._audit("console.user_added", user=session.username, target=name, role=role)
                    message = f"user {name} added as {role}"
                elif action in ("disable", "enable"):
                    if name == session.username:
                        raise WorkflowError("you cannot disable your own account")
                    self.store.set_disabled(name, action == "disable")
                    self._audit(f"console.user_{action}d", user=session.username, target=name)
                    message = f"user {name} {action}d"
                else:
                    raise WorkflowError("unknown action")
            except Exception as exc:   # InputError / WorkflowError: shown, nothing changed
                if not hasattr(exc, "exit_code"):
                    raise
                message = str(exc)
        return self._page("users.html", session, users=self.store.users(), roles=ROLES, message=message)


def _explanation_in_words(explanation: dict[str, Any]) -> list[tuple[str, str]]:
    """``{"wrist_speed_torso_per_s": 4.25}`` -> ``[("wrist speed (torso per s)", "4.25")]``."""
    out = []
    for key, value in sorted(explanation.items()):
        words = key.replace("_per_s", " per s").replace("_", " ")
        for unit in (" torso per s", " torso", " s", " px"):
            if words.endswith(unit):
                words = f"{words[: -len(unit)]} ({unit.strip()})"
                break
        out.append((words, f"{value:.2f}" if isinstance(value, float) else str(value)))
    return out


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def default_station_key(station_dir: str | Path) -> Path:
    """Where the station's HPKE private key is read: the systemd credential when the unit passes
    one (``LoadCredential=``, the console's own copy in memory), else the station's key directory."""
    import os

    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / STATION_KEY_CREDENTIAL).exists():
        return Path(credentials) / STATION_KEY_CREDENTIAL
    return StationKeyPaths.of(station_dir).hpke_private


async def _wait(queue, timeout: float):
    import asyncio

    return await asyncio.wait_for(queue.get(), timeout)


def _utc(unix_ms: int | None) -> str:
    if not unix_ms:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix_ms / 1000)) + "Z"
