"""The staff web app: server-rendered pages (Jinja2) on top of the HTTP API's application.

`create_app` builds the API (`timeline.api.create_app`: /v1, security headers, access log)
and adds the pages for people: sign in and out, a student's page (status, tasks, fines,
history and the SVG timeline, as of a day and as known at a moment), what changed between
two known-at moments, the population lists with CSV downloads, the audit of access (admin
tokens) and the API docs, served from a packaged Swagger UI (no CDN). Every page is also
JSON with `?format=json`. The CSP forbids inline script: the pages use none.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.exceptions import HTTPException as StarletteHTTPException

from projections import dates
from projections.engine import DerivationError, view
from projections.models import StudentView
from projections.readmodel import ReadModel
from projections.rules import DEFAULT_RULES, RuleBook
from timeline import api
from timeline.api_service import Busy, ClosingStreamingResponse, ServiceOptions, SharedStore
from timeline.api_settings import ApiConfig, Token
from timeline.audit import accesses
from timeline.clock import Clock, system_clock, taipei_today
from timeline.facts import Fact
from timeline.history import history_entries
from timeline.settings import Settings
from timeline.store import TimelineStore
from web import i18n, lists
from web.inputs import InputError, as_of_day, known_moment, whole_number
from web.session import LOGIN_COOKIE, SESSION_COOKIE, Session, SessionError, Signer
from web.settings import WebSettings

__all__ = ["create_app"]

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
MAX_PER_PAGE = 500
SEARCH_LIMIT = 50  # students a search shows (it says when more match)
# The label of each field `what_changed` compares.
CHANGE_FIELD_LABELS = {
    "status": "state",
    "opens_on": "opens_on",
    "due_on": "due_on",
    "done_on": "done_on",
    "where": "where",
    "fee_ntd": "fee",
    "rule": "rule",
    "caused_by": "caused_by",
    "accrued_on": "accrued_on",
    "amount_min_ntd": "amount_min",
    "amount_max_ntd": "amount_max",
    "amount_ntd": "imposed",
    "paid_ntd": "paid",
    "offense": "offense",
}
# The label of each query field a page reads: a value that cannot be read is named by it.
FIELD_LABELS = {
    "as_of": "as_of",
    "known_at": "known_at",
    "known_from": "known_from",
    "known_to": "known_to",
    "kind": "kind",
    "status": "state",
    "sort": "sort",
    "per_page": "per_page",
    "days": "days_ahead",
    "q": "student_id_prefix",
    "student_id": "student_id",
    "token_name": "token_name",
}
# Paths whose answers are JSON or a feed whoever asks (never a page).
API_PREFIXES = ("/v1/", "/calendar/")
# History fields shown in their own columns (the rest are the event's details).
HISTORY_ENVELOPE = frozenset(
    {
        "event_id",
        "source",
        "student_id",
        "type",
        "occurred_on",
        "recorded_at",
        "retracted",
        "retracted_at",
        "retracted_by",
        "known",
        "retracted_then",
    }
)
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class NotSignedIn(Exception):
    """No valid session (and no bearer token): sign in first."""

    def __init__(self, reason: str, had_cookie: bool) -> None:
        self.reason = reason
        self.had_cookie = had_cookie
        super().__init__(reason)


class PageError(Exception):
    """An error page: its status, the label of its message, and a detail (escaped).

    `field`: the label of the field whose value was refused; `retry`: the page without it.
    """

    def __init__(
        self,
        status: int,
        key: str,
        detail: str | None = None,
        *,
        field: str | None = None,
        retry: str | None = None,
    ) -> None:
        self.status = status
        self.key = key
        self.detail = detail
        self.field = field
        self.retry = retry
        super().__init__(key)


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the token's name, whether it is an admin token, and the session."""

    token_name: str
    admin: bool
    session: Session | None
    csrf: str | None


def safe_next(target: str | None, root: str = "") -> str:
    """A path of this app, served under `root`, to go back to (anything else: its home page).

    Only `root` + "/..." is kept, never `//host`, `/\\host` or a URL, and no dot segment
    (`..`, `%2e%2e`) or backslash that a browser would resolve to a path outside `root`.
    """
    home = root + "/"
    if not target or not target.isprintable() or len(target) > 2000:
        return home
    if not target.startswith(home):
        return home
    path = target[len(root) :].split("?", 1)[0].split("#", 1)[0]
    if path.startswith("//") or "\\" in path:
        return home
    if any(part.lower().replace("%2e", ".") in (".", "..") for part in path.split("/")):
        return home
    return target


def root_path(request: Request) -> str:
    """The path prefix the app is served under (`scope["root_path"]`; "" without one)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def page_path(request: Request) -> str:
    """The request's path inside the app: without the prefix, which uvicorn puts in `path`."""
    path = request.url.path
    root = root_path(request)
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


def browser_path(request: Request) -> str:
    """The path and query the browser asked for (the prefix included): where `next` leads."""
    query = f"?{request.url.query}" if request.url.query else ""
    return root_path(request) + page_path(request) + query


def wants_json(request: Request) -> bool:
    """Whether the page was asked for as JSON (`?format=json`)."""
    return request.query_params.get("format") == "json"


def browser_page(request: Request) -> bool:
    """Whether a person's browser asked for a page (not a script, the API or a feed)."""
    return (
        not wants_json(request)
        and "text/html" in request.headers.get("accept", "")
        and not page_path(request).startswith(API_PREFIXES)
    )


def _lang(request: Request) -> str:
    return i18n.choose_lang(
        request.cookies.get(i18n.LANG_COOKIE), request.headers.get("accept-language")
    )


def create_app(
    config: ApiConfig,
    rules: RuleBook | None = None,
    *,
    settings: WebSettings | None = None,
    clock: Clock = system_clock,
    service: ServiceOptions | None = None,
) -> FastAPI:
    """The API plus the staff pages; without settings, a session key made for this process.

    The pages use the API's shared store and read models (`app.state.shared`).
    """
    rulebook = rules if rules is not None else DEFAULT_RULES
    settings = settings or WebSettings.from_settings(Settings())
    app = api.create_app(config, rulebook, clock, service=service)
    shared: SharedStore = app.state.shared
    signer = Signer(settings.session_secret)
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    admins = {t.name for t in config.admin_tokens}

    @app.get("/static/timeline.css", include_in_schema=False)
    def timeline_style() -> Response:
        """The SVG timeline's style sheet (kept beside the code that draws it)."""
        from web.timeline_svg import TIMELINE_CSS

        return Response(TIMELINE_CSS, media_type="text/css; charset=utf-8")

    # After the route above, so that it wins over the mount.
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # Swagger UI as the fastapi-offline package ships it (5.x: reads OpenAPI 3.1), no CDN.
    docs_assets = _packaged_swagger_ui()
    if docs_assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")

    # -- helpers ---------------------------------------------------------------------------
    @contextmanager
    def store() -> Iterator[TimelineStore]:
        with shared.store() as opened:
            yield opened

    @contextmanager
    def read_model(opened: TimelineStore) -> Iterator[ReadModel]:
        model = shared.read_model(opened)
        try:
            yield model
        finally:
            model.close()

    def secure(request: Request) -> bool:
        return settings.always_secure or request.url.scheme == "https"

    def cookie_path(request: Request, under: str = "") -> str:
        # The app's cookies stay under its prefix (a proxy may serve other apps beside it).
        return root_path(request) + under or "/"

    def today() -> Any:
        return taipei_today(clock)

    def render(
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        who: Viewer | None = None,
        status: int = 200,
        here: str | None = None,
    ) -> HTMLResponse:
        """The page; `here`: where the language switch comes back to (default: this URL)."""
        lang = _lang(request)
        other = "en" if lang == "zh-TW" else "zh-TW"
        root = root_path(request)
        here = here or browser_path(request)

        def t(key: str, **values: Any) -> str:
            text = i18n.label(key, lang)
            return text.format(**values) if values else text

        page = env.get_template(template).render(
            lang=lang,
            other_lang=other,
            lang_url=f"{root}/lang/{other}?{urlencode({'next': here})}",
            t=t,
            name=lambda kind, code: i18n.name(kind, code, lang),
            name_other=lambda kind, code: i18n.name(kind, code, other),
            hidden_keys=HISTORY_ENVELOPE,
            day=i18n.day,
            moment=i18n.moment,
            moment_param=i18n.moment_param,
            ntd=i18n.ntd,
            ntd_range=i18n.ntd_range,
            who=who,
            today=today().isoformat(),
            root=root,
            path=page_path(request),
            here=here,
            quote=lambda s: quote(str(s), safe=""),
            **context,
        )
        return HTMLResponse(page, status_code=status)

    def viewer(request: Request) -> Viewer:
        """Who is asking: a bearer token (scripts), else the session cookie."""
        header = request.headers.get("authorization")
        if header is not None:
            presented = api.bearer_token(request)  # the API's own parsing and its 401
            token = api.find_token(presented, config.readers())
            if token is None:
                if api.find_token(presented, config.feed_tokens) is not None:
                    raise PageError(403, "sign_in_not_reader")
                raise PageError(401, "sign_in_failed")
            request.state.token_name = token.name
            return Viewer(token.name, token.name in admins, None, None)
        cookie = request.cookies.get(SESSION_COOKIE)
        try:
            session = signer.open(cookie, config.readers(), clock())
        except SessionError as exc:
            raise NotSignedIn(str(exc), cookie is not None) from None
        request.state.token_name = session.token_name
        return Viewer(
            session.token_name, session.token_name in admins, session, signer.csrf(session)
        )

    signed_in = Depends(viewer)

    def error_page(request: Request, exc: PageError) -> Response:
        if wants_json(request):
            detail = f": {exc.detail}" if exc.detail else ""
            return JSONResponse(
                {"error": i18n.label(exc.key, "en") + detail}, status_code=exc.status
            )
        who = None
        with suppress(NotSignedIn, PageError):
            who = viewer(request)
        return render(
            request,
            "error.html",
            {
                "key": exc.key,
                "detail": exc.detail,
                "status": exc.status,
                "field": exc.field,
                "retry": exc.retry,
            },
            who=who,
            status=exc.status,
        )

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        return error_page(request, exc)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> Response:
        retry = {"Retry-After": str(exc.retry_after)}
        if wants_json(request) or page_path(request).startswith(API_PREFIXES):
            return JSONResponse({"error": str(exc)}, status_code=503, headers=retry)
        page = error_page(request, PageError(503, "busy"))
        page.headers.update(retry)
        return page

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        # The message starts with the query field it refuses ("as_of: ..."): the page names
        # the field and leads back to itself without that value, the other filters kept.
        key = str(exc).split(":", 1)[0]
        retry = None
        if request.method == "GET" and request.query_params.get(key, "").strip():
            kept = [(k, v) for k, v in request.query_params.multi_items() if k != key]
            query = f"?{urlencode(kept)}" if kept else ""
            retry = root_path(request) + page_path(request) + query
        field = FIELD_LABELS.get(key)
        refused = PageError(400, "bad_request", str(exc), field=field, retry=retry)
        return error_page(request, refused)

    def page_when_unavailable(handler: Any) -> Any:
        async def answer(request: Request, exc: Exception) -> Response:
            response: Response = await handler(request, exc)
            if response.status_code == 503 and browser_page(request):
                page = error_page(request, PageError(503, "store_unavailable"))
                if "retry-after" in response.headers:
                    page.headers["Retry-After"] = response.headers["retry-after"]
                return page
            return response

        return answer

    # The API's answers to a store that went away (503) are the error page in a browser.
    for failure, handler in list(app.exception_handlers.items()):
        if failure is not Exception:
            app.add_exception_handler(failure, page_when_unavailable(handler))

    api_http_error = app.exception_handlers[StarletteHTTPException]
    api_bad_request = app.exception_handlers[RequestValidationError]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # A mistyped address in a browser is a page (header, language, a way home); the API
        # and scripts keep their JSON.
        if exc.status_code == 404 and browser_page(request):
            return error_page(request, PageError(404, "no_such_page"))
        return await api_http_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def bad_page_request(request: Request, exc: RequestValidationError) -> Response:
        answer = await api_bad_request(request, exc)
        if not browser_page(request):
            return answer
        key = next((str(e["loc"][-1]) for e in exc.errors() if e.get("loc")), "")
        detail = json.loads(bytes(answer.body))["error"]
        return error_page(
            request, PageError(400, "bad_request", detail, field=FIELD_LABELS.get(key))
        )

    @app.exception_handler(DerivationError)
    async def derivation_error(request: Request, exc: DerivationError) -> Response:
        if page_path(request).startswith(API_PREFIXES):
            # This handler replaces the API's for the whole app: the API (and the calendar
            # feed behind a secret link, read by calendar apps) answers its own shape.
            return JSONResponse({"error": str(exc)}, status_code=422)
        return error_page(request, PageError(422, "cannot_derive", str(exc)))

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"error": f"sign in first ({exc.reason})"}, status_code=401)
        query = {"next": browser_path(request)} | ({"ended": "1"} if exc.had_cookie else {})
        root = root_path(request)
        response = RedirectResponse(f"{root}/sign-in?{urlencode(query)}", status_code=303)
        if exc.had_cookie:
            response.delete_cookie(SESSION_COOKIE, path=cookie_path(request))
        return response

    # -- signing in and out ------------------------------------------------------------------
    def sign_in_page(
        request: Request, next_url: str, message: str | None, status: int = 200
    ) -> HTMLResponse:
        cookie, form_token = signer.login_pair(clock(), request.cookies.get(LOGIN_COOKIE))
        response = render(
            request,
            "sign_in.html",
            {"csrf": form_token, "next_url": next_url, "message": message},
            status=status,
            # The answer to a POST too: the switch comes back to the form, `next` kept.
            here=f"{root_path(request)}/sign-in?{urlencode({'next': next_url})}",
        )
        response.set_cookie(
            LOGIN_COOKIE,
            cookie,
            max_age=1800,
            path=cookie_path(request, "/sign-in"),
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        return response

    @app.get("/sign-in", include_in_schema=False, response_model=None)
    def sign_in_form(
        request: Request, next: str | None = None, ended: str | None = None, out: str | None = None
    ) -> Response:
        """The sign-in form (a signed-in browser goes straight on)."""
        try:
            viewer(request)
            return RedirectResponse(safe_next(next, root_path(request)), status_code=303)
        except (NotSignedIn, PageError):
            pass
        message = "session_ended" if ended else ("signed_out" if out else None)
        return sign_in_page(request, safe_next(next, root_path(request)), message)

    @app.post("/sign-in", include_in_schema=False, response_model=None)
    def sign_in(
        request: Request,
        token: Annotated[str, Form(max_length=4096)] = "",
        csrf: Annotated[str, Form(max_length=200)] = "",
        next: Annotated[str, Form(max_length=2000)] = "/",
    ) -> Response:
        """Check the token once and start a session (a signed, HttpOnly, SameSite cookie)."""
        try:
            signer.check_login(request.cookies.get(LOGIN_COOKIE), csrf, clock())
        except SessionError:
            with suppress(NotSignedIn, PageError):
                # Signed in already (from another tab's form): nothing to do but go on.
                viewer(request)
                return RedirectResponse(safe_next(next, root_path(request)), status_code=303)
            return sign_in_page(
                request, safe_next(next, root_path(request)), "session_ended", status=403
            )
        presented = token.strip()
        found: Token | None = api.find_token(presented, config.readers()) if presented else None
        if found is None:
            feed = presented and api.find_token(presented, config.feed_tokens) is not None
            log.info("sign-in refused (%s)", "feed token" if feed else "unknown token")
            key = "sign_in_not_reader" if feed else "sign_in_failed"
            return sign_in_page(
                request, safe_next(next, root_path(request)), key, status=403 if feed else 401
            )
        cookie, _ = signer.issue(found, clock(), settings.session_length)
        request.state.token_name = found.name
        log.info("signed in: %s", found.name)
        response = RedirectResponse(safe_next(next, root_path(request)), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(settings.session_length.total_seconds()),
            path=cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        response.delete_cookie(LOGIN_COOKIE, path=cookie_path(request, "/sign-in"))
        return response

    @app.post("/sign-out", include_in_schema=False, response_model=None)
    def sign_out(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
        """End the session (the form carries the session's CSRF token)."""
        try:
            session = signer.open(request.cookies.get(SESSION_COOKIE), config.readers(), clock())
        except SessionError:
            session = None
        if session is not None:
            try:
                signer.check_csrf(session, csrf)
            except SessionError as exc:
                # A form from an earlier session (a tab left open): the error page's own
                # Sign out button carries this session's token.
                raise PageError(403, "sign_out_stale", str(exc)) from None
        response = RedirectResponse(f"{root_path(request)}/sign-in?out=1", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=cookie_path(request))
        return response

    @app.get("/lang/{code}", include_in_schema=False, response_model=None)
    def choose_language(request: Request, code: str, next: str | None = None) -> Response:
        """Switch the language (remembered in a cookie for a year) and go back."""
        if code not in i18n.LANGS:
            raise PageError(404, "no_such_page")
        response = RedirectResponse(safe_next(next, root_path(request)), status_code=303)
        response.set_cookie(
            i18n.LANG_COOKIE,
            code,
            max_age=365 * 24 * 3600,
            path=cookie_path(request),
            httponly=True,
            samesite="lax",
            secure=secure(request),
        )
        return response

    # -- pages -------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False, response_model=None)
    def home(request: Request, who: Viewer = signed_in) -> Response:
        """The home page: find a student, open a list."""
        if wants_json(request):
            return JSONResponse(
                {
                    "token_name": who.token_name,
                    "lists": sorted(lists.LISTS),
                    "admin": who.admin,
                }
            )
        return render(request, "home.html", {"lists": lists.LISTS}, who=who)

    @app.get("/students", include_in_schema=False, response_model=None)
    def search(
        request: Request,
        who: Viewer = signed_in,
        q: Annotated[str, Query(max_length=200)] = "",
    ) -> Response:
        """Students whose id starts with `q` (at most 50; `more` when others match too)."""
        found: list[str] = []
        prefix = q.strip()
        if prefix:
            with store() as opened, read_model(opened) as model:
                found = model.students_with_prefix(prefix, SEARCH_LIMIT + 1)
        more = len(found) > SEARCH_LIMIT
        found = found[:SEARCH_LIMIT]
        if wants_json(request):
            return JSONResponse({"q": prefix, "students": found, "more": more})
        context = {"q": prefix, "found": found, "more": more, "limit": SEARCH_LIMIT}
        return render(request, "search.html", context, who=who)

    def student_facts(student_id: str, who: Viewer, route: str) -> list[Fact]:
        with store() as opened:
            stream = opened.stream(student_id)
            if not stream:
                raise PageError(404, "not_found")
            shared.record_access(opened, who.token_name, route, student_id, clock())
        return stream

    @app.get("/students/{student_id:student}", include_in_schema=False, response_model=None)
    def student_page(
        request: Request,
        student_id: str,
        who: Viewer = signed_in,
        as_of: str | None = None,
        known_at: str | None = None,
    ) -> Response:
        """A student's record as of a day, as known at a moment (every view is audited)."""
        on = as_of_day(as_of, today())
        moment = known_moment(known_at)
        stream = student_facts(student_id, who, "GET /students/{student_id}")
        result = view(stream, on, moment, rulebook, student_id=student_id)
        history = _history(stream, moment)
        if wants_json(request):
            return JSONResponse(
                {"view": result.model_dump(mode="json"), "history": history},
            )
        lang = _lang(request)
        timeline = _timeline(result, stream, on, lang)
        tasks = [
            {
                "task": task,
                "days_left": None if task.due_on is None else dates.days_between(on, task.due_on),
            }
            for task in result.tasks
        ]
        return render(
            request,
            "student.html",
            {
                "v": result,
                "tasks": tasks,
                "history": history,
                "timeline": timeline,
                "as_of": on.isoformat(),
                "known_at": moment,
                "known_at_text": i18n.moment_param(moment),
                "sid": student_id,
            },
            who=who,
        )

    @app.get("/students/{student_id:student}/changes", include_in_schema=False, response_model=None)
    def changes_page(
        request: Request,
        student_id: str,
        who: Viewer = signed_in,
        as_of: str | None = None,
        known_from: str | None = None,
        known_to: str | None = None,
    ) -> Response:
        """What changed in a student's view between two known-at moments (audited)."""
        from web.changes import what_changed

        on = as_of_day(as_of, today())
        first = known_moment(known_from, "known_from")
        second = known_moment(known_to, "known_to") or clock()
        if first is None:
            raise InputError("known_from: required (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS])")
        if first > second:
            first, second = second, first
        stream = student_facts(student_id, who, "GET /students/{student_id}/changes")
        found = what_changed(stream, on, first, second, rulebook)
        if wants_json(request):
            return JSONResponse(found.as_json())
        return render(
            request,
            "changes.html",
            {
                "sid": student_id,
                "c": found,
                "as_of": on.isoformat(),
                "known_from": i18n.moment_param(first),
                "known_to": i18n.moment_param(second),
                "field_labels": CHANGE_FIELD_LABELS,
            },
            who=who,
        )

    @app.get("/lists/{name}", include_in_schema=False, response_model=None)
    def list_page(
        request: Request,
        name: str,
        who: Viewer = signed_in,
        as_of: str | None = None,
        known_at: str | None = None,
        kind: Annotated[list[str] | None, Query()] = None,
        status: Annotated[list[str] | None, Query()] = None,
        sort: str | None = None,
        page: str | None = None,
        per_page: str | None = None,
        days: str | None = None,
        format: str | None = None,
    ) -> Response:
        """A population list as of a day, as known at a moment: page, JSON or CSV."""
        spec = lists.LISTS.get(name)
        if spec is None:
            raise PageError(404, "no_such_page")
        kinds = [k for k in (kind or []) if k]
        statuses = [s for s in (status or []) if s]
        if any(k not in spec.kinds for k in kinds):
            raise InputError("kind: not one of " + ", ".join(spec.kinds or ("(none)",)))
        if any(s not in spec.statuses for s in statuses):
            raise InputError("status: not one of " + ", ".join(spec.statuses or ("(none)",)))
        sort_key = sort or next(iter(spec.sorts))
        if sort_key not in spec.sorts:
            raise InputError("sort: not one of " + ", ".join(spec.sorts))
        if format not in (None, "", "json", "csv", "excel"):
            raise InputError("format: json, csv or excel")
        q = lists.Query(
            as_of=as_of_day(as_of, today()),
            known_at=known_moment(known_at),
            kinds=kinds,
            statuses=statuses or list(spec.default_statuses),
            sort=sort_key,
            page=whole_number(page, "page", 1, 1, 10**9),
            per_page=whole_number(per_page, "per_page", 50, 1, MAX_PER_PAGE),
            days=whole_number(days, "days", 30, 0, 366),
        )
        if format in ("csv", "excel"):
            return _csv_download(spec, q, format == "excel", _lang(request))
        offset = (q.page - 1) * q.per_page
        with shared.gate.slot(), store() as opened, read_model(opened) as model, model.snapshot():
            total = lists.count(spec, model, q)
            found = list(
                lists.rows(
                    spec,
                    model,
                    q,
                    limit=q.per_page,
                    offset=offset,
                    overstay_of=_overstay_finder(opened, q),
                )
            )
            left_out = [row["student_id"] for row in model.errors(q.known_at)]
        if format == "json":
            return JSONResponse(
                {
                    "list": name,
                    "as_of": q.as_of.isoformat(),
                    "known_at": None if q.known_at is None else q.known_at.isoformat(),
                    "kinds": q.kinds,
                    "statuses": q.statuses,
                    "sort": q.sort,
                    "page": q.page,
                    "per_page": q.per_page,
                    "total": total,
                    "rows": found,
                    "left_out": left_out,
                }
            )
        pages = max(1, math.ceil(total / q.per_page))
        base = {
            "as_of": q.as_of.isoformat(),
            "known_at": i18n.moment_param(q.known_at),
            "kind": q.kinds,
            "status": statuses,
            "sort": q.sort,
            "per_page": q.per_page,
        }
        if spec.name == "due-soon":
            base["days"] = q.days

        def link(**changes: Any) -> str:
            params = {k: v for k, v in (base | changes).items() if v not in ("", None, [])}
            return f"{root_path(request)}/lists/{name}?{urlencode(params, doseq=True)}"

        return render(
            request,
            "list.html",
            {
                "spec": spec,
                "q": q,
                "rows": found,
                "total": total,
                "pages": pages,
                "left_out": left_out,
                "link": link,
                "known_at_text": i18n.moment_param(q.known_at),
                "sort_labels": lists.SORT_LABELS,
                "selected_statuses": statuses,
            },
            who=who,
        )

    def _overstay_finder(
        opened: TimelineStore, q: lists.Query
    ) -> Callable[[str], dict[str, Any] | None]:
        def find(student_id: str) -> dict[str, Any] | None:
            stream = opened.stream(student_id)
            try:
                found = view(stream, q.as_of, q.known_at, rulebook, student_id=student_id)
            except DerivationError:
                return None
            return None if found.overstay is None else found.overstay.model_dump(mode="json")

        return find

    def _csv_download(spec: lists.ListSpec, q: lists.Query, excel: bool, lang: str) -> Response:
        # The read models are brought up to date before the answer begins, as the API's
        # lists are: a failure there (busy, the store unavailable) is a 503, not a 200 cut
        # off after its header (synced inside the stream, it was the latter).
        held = ExitStack()
        try:
            with shared.gate.slot():
                opened = held.enter_context(store())
                model = held.enter_context(read_model(opened))
        except BaseException:
            held.close()
            raise

        def lines() -> Iterator[bytes]:
            if excel:
                yield lists.BOM.encode("utf-8")
            found = lists.rows(
                spec, model, q, limit=None, offset=0, overstay_of=_overstay_finder(opened, q)
            )
            for text in lists.csv_lines(spec, found, lang):
                yield text.encode("utf-8")

        made = lines()

        def end() -> None:
            made.close()  # the query, at once when the client is gone
            held.close()  # the read model back to its pool

        suffix = "-excel" if excel else ""
        filename = f"{spec.name}-{q.as_of.isoformat()}{suffix}.csv"
        return ClosingStreamingResponse(
            # Computed a slot at a time (`PopulationGate.parts`), never while the client reads.
            shared.gate.parts(made),
            on_close=end,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.get("/audit", include_in_schema=False, response_model=None)
    def audit_page(
        request: Request,
        who: Viewer = signed_in,
        student_id: Annotated[str | None, Query(max_length=200)] = None,
        token_name: Annotated[str | None, Query(max_length=64)] = None,
        page: str | None = None,
    ) -> Response:
        """Who viewed whose record (admin tokens only), newest first."""
        if not who.admin:
            raise PageError(403, "forbidden")
        number = whole_number(page, "page", 1, 1, 10**9)
        per_page = 100
        with store() as opened:
            found, total = accesses(
                opened,
                student_id=student_id or None,
                token_name=token_name or None,
                limit=per_page,
                offset=(number - 1) * per_page,
            )
        if wants_json(request):
            return JSONResponse(
                {"total": total, "page": number, "rows": [a.as_json() for a in found]}
            )
        params = {"student_id": student_id or "", "token_name": token_name or ""}

        def link(n: int) -> str:
            query = urlencode({k: v for k, v in params.items() if v} | {"page": n})
            return f"{root_path(request)}/audit?{query}"

        return render(
            request,
            "audit.html",
            {
                "rows": found,
                "total": total,
                "page": number,
                "pages": max(1, math.ceil(total / per_page)),
                "link": link,
                "student_id": student_id or "",
                "token_name": token_name or "",
            },
            who=who,
        )

    @app.get("/docs", include_in_schema=False, response_model=None)
    def docs(request: Request) -> Response:
        """The interactive API docs (Swagger UI from the packaged copy: works offline)."""
        if docs_assets is None:
            raise PageError(404, "no_such_page")
        response = render(request, "docs.html", {})
        response.headers["Content-Security-Policy"] = DOCS_CSP
        return response

    return app


def app_from_environment(environ: Mapping[str, str] | None = None) -> FastAPI:
    """The API and the pages configured by `load_settings` (`web.app:app`)."""
    loaded = api.settings_from_environment(environ)
    api.configure_logging(loaded.log_format)
    config, service = api.config_from_settings(loaded)
    return create_app(
        config,
        loaded.rulebook(),
        settings=WebSettings.from_settings(loaded),
        service=service,
    )


def __getattr__(name: str) -> Any:
    # `web.app:app` (what `timeline serve --workers N` runs) is built when first asked for.
    if name == "app":
        built = globals().get("_app")
        if built is None:
            built = globals()["_app"] = app_from_environment()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _packaged_swagger_ui() -> Path | None:
    """The folder of the packaged Swagger UI files (None if the package is missing)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _history(stream: list[Fact], known_at: datetime | None) -> list[dict[str, Any]]:
    """The stored events with retraction marks; marked as not yet known at `known_at`."""
    entries = history_entries(stream)
    for entry in entries:
        recorded = datetime.fromisoformat(entry["recorded_at"])
        entry["known"] = known_at is None or recorded <= known_at
        retracted_at = entry["retracted_at"]
        entry["retracted_then"] = retracted_at is not None and (
            known_at is None or datetime.fromisoformat(retracted_at) <= known_at
        )
    return entries


def _timeline(result: StudentView, stream: list[Fact], as_of: date, lang: str) -> Markup:
    """The SVG timeline of the student's whole history, drawn as of `as_of`."""
    from web.timeline_svg import render_timeline

    return render_timeline(result, stream, as_of, lang)
