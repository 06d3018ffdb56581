"""``GET /dashboard``: the node's live dashboard, and the ``admin.token`` check of the operator endpoints.

The page is plain HTML, CSS and JavaScript shipped in the package
(``receive/static/``: no CDN, no build step, charts drawn as SVG by the
page itself).  It reads ``/status`` every few seconds and shows the totals
since the node started, throughput over the last minutes (from the ``run``
member's history, else from what the page saw), the spool backlog, the
quarantine by category, a per-hook latency table, disk space, and the
node's processes with their restarts.

When ``admin.token`` is set, ``/status``, ``/metrics`` and ``/dashboard``
(with its files) answer 401 unless the request carries
``Authorization: Bearer <token>`` or the cookie ``telemetry_admin_token``
with the token.  A browser cannot send a header when it opens a page, so
``/dashboard`` without it answers a small form that asks for the token once
and keeps it in that cookie (``SameSite=Strict``, for this site's path
``/`` only).  Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

__all__ = ["COOKIE", "STATIC_DIR", "add_dashboard_routes", "admin_token", "require_token"]

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "telemetry_admin_token"
#: Files the page loads, and their content types.
ASSETS = {"dashboard.js": "application/javascript", "dashboard.css": "text/css", "charts.js": "application/javascript"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>telemetry-core: token</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 30em; margin: 4em auto">
<h1>telemetry-core dashboard</h1>
<p>This node requires its admin token (<code>admin.token</code>).</p>
<form id="login"><label>Token <input id="token" type="password" autocomplete="current-password" autofocus></label>
<button type="submit">Open</button></form>
<script>
document.getElementById("login").addEventListener("submit", function (event) {
  event.preventDefault();
  var token = document.getElementById("token").value;
  document.cookie = "%s=" + encodeURIComponent(token) + "; path=/; SameSite=Strict";
  location.reload();
});
</script></body></html>
""" % COOKIE


def _authorized(request: web.Request, token: str) -> bool:
    expected = token.encode()
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer " and hmac.compare_digest(header[7:].strip().encode(), expected):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), expected)


def require_token(token: str | None, handler: Handler, *, login_page: bool = False) -> Handler:
    """``handler`` behind the admin token (``handler`` itself when no token is set).

    A refused request gets 401 with ``WWW-Authenticate: Bearer``; with
    ``login_page`` its body is the form that asks for the token.
    """
    if not token:
        return handler

    async def guarded(request: web.Request) -> web.StreamResponse:
        if _authorized(request, token):
            return await handler(request)
        headers = {"WWW-Authenticate": 'Bearer realm="telemetry-core"', "Cache-Control": "no-store"}
        if login_page:
            return web.Response(status=401, text=_LOGIN, content_type="text/html", headers=headers)
        return web.Response(status=401, text="unauthorized: send Authorization: Bearer <admin.token>\n",
                            headers=headers)

    guarded.__doc__ = handler.__doc__
    return guarded


async def dashboard_page(request: web.Request) -> web.StreamResponse:
    """``GET /dashboard``: the page (it fetches ``/status`` itself)."""
    return web.FileResponse(STATIC_DIR / "dashboard.html", headers={"Content-Type": "text/html; charset=utf-8",
                                                                     "Cache-Control": "no-cache"})


async def dashboard_asset(request: web.Request) -> web.StreamResponse:
    """``GET /dashboard/<file>``: the page's script and style sheet (nothing else is served)."""
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound(text="no such dashboard file\n")
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": f"{ASSETS[name]}; charset=utf-8",
                                                        "Cache-Control": "no-cache"})


def add_dashboard_routes(router: web.UrlDispatcher, token: str | None) -> None:
    """Mount ``/dashboard`` and its files, behind ``admin.token`` when it is set."""
    router.add_get("/dashboard", require_token(token, dashboard_page, login_page=True))
    router.add_get("/dashboard/{name}", require_token(token, dashboard_asset))


def admin_token(engine: Any) -> str | None:
    """``admin.token`` of the engine's config (``None`` when unset or empty)."""
    token = engine.config.get("admin.token")
    return token or None
