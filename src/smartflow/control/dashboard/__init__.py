"""The dashboard: static pages served by the control plane under ``/dashboard``.

The pages read the control-plane API with the browser's session cookie, which
``POST /dashboard/login`` sets after checking an admin token. The cookie authenticates
``GET`` requests only, so the dashboard can show everything a token's role may read and
change nothing. Chart.js is vendored under ``static/vendor/chartjs``, so the pages load
nothing from other hosts.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from smartflow.control.api.routing import PLANE_KEY
from smartflow.control.api.session import SESSION_COOKIE, SESSION_KEY, SessionCodec, session_token
from smartflow.core.errors import AuthenticationError

__all__ = ["DASHBOARD_PATH", "STATIC_DIR", "add_dashboard"]

logger = logging.getLogger(__name__)

DASHBOARD_PATH = "/dashboard"
STATIC_DIR = Path(__file__).parent / "static"

_SECURITY_HEADERS = {
    # Everything comes from this origin; Chart.js needs no inline script or eval.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": with it, Chromium sends "Origin: null" on the sign-in form.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_MESSAGE_MARK = "<!-- message -->"
_MAX_TOKEN_CHARS = 512


def _page(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _html(text: str, status: int = 200) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _login_page(message: str | None = None, status: int = 200) -> web.Response:
    text = _page("login.html")
    if message:
        text = text.replace(
            _MESSAGE_MARK, f'<p class="login-error" role="alert">{html.escape(message)}</p>'
        )
    return _html(text, status)


def _same_origin(request: web.Request) -> bool:
    """Return False when the request's ``Origin`` header names another host.

    Only host and port are compared, because behind a proxy that terminates TLS the
    browser's scheme is https while requests reach this server over http.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


async def _signed_in(request: web.Request) -> bool:
    try:
        token = session_token(request)
        if token is None:
            return False
        await request.app[PLANE_KEY].access.authenticate_admin(token)
    except AuthenticationError:
        return False
    return True


async def _redirect_to_app(_request: web.Request) -> web.Response:
    raise web.HTTPFound(f"{DASHBOARD_PATH}/")


async def _app_shell(request: web.Request) -> web.Response:
    if not await _signed_in(request):
        raise web.HTTPSeeOther(f"{DASHBOARD_PATH}/login")
    return _html(_page("index.html"))


async def _show_login(request: web.Request) -> web.Response:
    if await _signed_in(request):
        raise web.HTTPSeeOther(f"{DASHBOARD_PATH}/")
    return _login_page()


async def _login(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _login_page("Sign-in rejected: the form was sent from another site.", 403)
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not token.strip():
        return _login_page("Enter an admin token to sign in.", 400)
    token = token.strip()
    if len(token) > _MAX_TOKEN_CHARS:
        return _login_page("That is not an admin token: it is too long.", 400)
    try:
        actor = await request.app[PLANE_KEY].access.authenticate_admin(token)
    except AuthenticationError:
        logger.warning("dashboard sign-in failed from %s: invalid admin token", request.remote)
        return _login_page(
            "The admin token was not accepted. Check that you pasted the whole token, "
            "or ask an admin for a new one.",
            401,
        )
    response = web.HTTPSeeOther(f"{DASHBOARD_PATH}/")
    request.app[SESSION_KEY].set_cookie(response, token, secure=request.secure)
    logger.info(
        "dashboard sign-in with admin token %r (role %s) from %s",
        actor.name,
        actor.role,
        request.remote,
    )
    raise response


async def _logout(request: web.Request) -> web.Response:
    if not _same_origin(request):
        raise web.HTTPForbidden(text="sign-out rejected: the form was sent from another site")
    response = web.HTTPSeeOther(f"{DASHBOARD_PATH}/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == DASHBOARD_PATH or request.path.startswith(f"{DASHBOARD_PATH}/"):
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    if request.path.startswith(f"{DASHBOARD_PATH}/static/"):
        # Revalidate on every load, so a browser never runs scripts older than the
        # control plane it talks to; an unchanged file costs a 304.
        response.headers.setdefault("Cache-Control", "no-cache")


def add_dashboard(app: web.Application, session_ttl_s: int) -> None:
    """Register the dashboard's pages and static files on the control-plane ``app``.

    The session key is derived from the control plane's secret key when the app starts,
    after the lifecycle context has opened the control plane.
    """

    async def make_session_codec(app: web.Application) -> None:
        box = app[PLANE_KEY].box
        app[SESSION_KEY] = SessionCodec.from_secret_box(box, session_ttl_s)

    app.router.add_get(DASHBOARD_PATH, _redirect_to_app, allow_head=False)
    app.router.add_get(f"{DASHBOARD_PATH}/", _app_shell, allow_head=False)
    app.router.add_get(f"{DASHBOARD_PATH}/login", _show_login, allow_head=False)
    app.router.add_post(f"{DASHBOARD_PATH}/login", _login)
    app.router.add_post(f"{DASHBOARD_PATH}/logout", _logout)
    app.router.add_static(f"{DASHBOARD_PATH}/static", STATIC_DIR)
    app.on_startup.append(make_session_codec)
    app.on_response_prepare.append(_add_headers)
