"""The dashboard's sign-in, session cookie and pages, over real HTTP without a browser."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.fernet import Fernet

from smartflow.control import start_control_plane
from smartflow.control.api.session import SESSION_COOKIE, SESSION_KEY_PURPOSE
from smartflow.control.dashboard import STATIC_DIR
from tests.control.conftest import ADMIN_TOKEN, Api, make_settings, new_database

LOGIN = "/dashboard/login"


async def sign_in(
    api: Api, token: str = ADMIN_TOKEN, origin: str | None = "same"
) -> aiohttp.ClientResponse:
    headers = {}
    if origin == "same":
        headers["Origin"] = api.url
    elif origin is not None:
        headers["Origin"] = origin
    async with api.http.post(
        api.url + LOGIN, data={"token": token}, headers=headers, allow_redirects=False
    ) as reply:
        await reply.read()
        return reply


def session_cookie(reply: aiohttp.ClientResponse) -> str:
    morsel = reply.cookies[SESSION_COOKIE]
    return morsel.value


async def get_with_cookie(api: Api, path: str, cookie: str) -> tuple[int, str]:
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(api.url + path, headers=headers, allow_redirects=False) as reply:
            return reply.status, await reply.text()


# --- sign-in --------------------------------------------------------------------------


async def test_sign_in_sets_strict_cookie(api: Api) -> None:
    reply = await sign_in(api)
    assert reply.status == 303
    assert reply.headers["Location"] == "/dashboard/"
    header = reply.headers["Set-Cookie"]
    assert header.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header
    assert "Path=/;" in header or header.endswith("Path=/")
    assert "Max-Age" not in header
    assert "expires" not in header.lower()
    # Plain HTTP on 127.0.0.1: a Secure cookie would never be sent back.
    assert "Secure" not in header


async def test_cookie_does_not_contain_token(api: Api) -> None:
    cookie = session_cookie(await sign_in(api))
    assert ADMIN_TOKEN not in cookie
    assert ADMIN_TOKEN.encode().hex() not in cookie


async def test_wrong_token_rejected(api: Api) -> None:
    reply = await sign_in(api, token="sf-admin-not-a-real-token")
    assert reply.status == 401
    assert SESSION_COOKIE not in reply.cookies


async def test_wrong_token_page_explains(api: Api) -> None:
    async with api.http.post(
        api.url + LOGIN, data={"token": "sf-admin-wrong"}, headers={"Origin": api.url}
    ) as reply:
        text = await reply.text()
    assert reply.status == 401
    assert "was not accepted" in text
    assert "sf-admin-wrong" not in text


async def test_empty_token_rejected(api: Api) -> None:
    reply = await sign_in(api, token="  ")
    assert reply.status == 400


async def test_cross_site_sign_in_rejected(api: Api) -> None:
    reply = await sign_in(api, origin="http://attacker.invalid")
    assert reply.status == 403
    assert SESSION_COOKIE not in reply.cookies


async def test_sign_in_behind_tls_proxy_accepted(api: Api) -> None:
    reply = await sign_in(api, origin=api.url.replace("http://", "https://"))
    assert reply.status == 303


async def test_sign_in_from_null_origin_rejected(api: Api) -> None:
    reply = await sign_in(api, origin="null")
    assert reply.status == 403


async def test_sign_in_without_origin_accepted(api: Api) -> None:
    reply = await sign_in(api, origin=None)
    assert reply.status == 303


# --- what the cookie allows -------------------------------------------------------------


async def test_cookie_authenticates_reads(api: Api) -> None:
    cookie = session_cookie(await sign_in(api))
    status, body = await get_with_cookie(api, "/v1/instances", cookie)
    assert status == 200, body
    status, _ = await get_with_cookie(api, "/v1/analytics/overview", cookie)
    assert status == 200


async def test_cookie_downloads_csv(api: Api) -> None:
    cookie = session_cookie(await sign_in(api))
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(
            api.url + "/v1/analytics/usage?group_by=model&format=csv", headers=headers
        ) as reply:
            assert reply.status == 200
            assert reply.content_type == "text/csv"
            assert "attachment" in reply.headers["Content-Disposition"]


async def test_cookie_cannot_write(api: Api) -> None:
    cookie = session_cookie(await sign_in(api))
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": api.url}
    async with aiohttp.ClientSession() as http:
        async with http.put(api.url + "/v1/teams/t", json={}, headers=headers) as reply:
            assert reply.status == 401
        async with http.post(
            api.url + "/v1/enrollment-tokens", json={"site": "s"}, headers=headers
        ) as reply:
            assert reply.status == 401
    status, _ = await api.call("GET", "/v1/teams/t")
    assert status == 404


async def test_cookie_keeps_token_role(api: Api) -> None:
    viewer = await api.ok("POST", "/v1/admin-tokens", json={"name": "v", "role": "viewer"})
    cookie = session_cookie(await sign_in(api, token=viewer["token"]))
    status, _ = await get_with_cookie(api, "/v1/instances", cookie)
    assert status == 200
    status, body = await get_with_cookie(api, "/v1/admin-tokens", cookie)
    assert status == 403, body


async def test_tampered_cookie_rejected(api: Api) -> None:
    cookie = session_cookie(await sign_in(api))
    tampered = cookie[:-6] + ("AAAAAA" if not cookie.endswith("AAAAAA") else "BBBBBB")
    status, body = await get_with_cookie(api, "/v1/instances", tampered)
    assert status == 401
    assert "sign in again" in body


async def test_foreign_key_cookie_rejected(api: Api) -> None:
    forged = Fernet(Fernet.generate_key()).encrypt(ADMIN_TOKEN.encode()).decode()
    status, _ = await get_with_cookie(api, "/v1/instances", forged)
    assert status == 401


async def test_deleted_token_ends_session(api: Api) -> None:
    created = await api.ok("POST", "/v1/admin-tokens", json={"name": "temp", "role": "admin"})
    cookie = session_cookie(await sign_in(api, token=created["token"]))
    assert (await get_with_cookie(api, "/v1/instances", cookie))[0] == 200
    await api.ok("DELETE", "/v1/admin-tokens/temp")
    status, _ = await get_with_cookie(api, "/v1/instances", cookie)
    assert status == 401
    status, _ = await get_with_cookie(api, "/dashboard/", cookie)
    assert status == 303


async def test_session_expires(tmp_path: Path) -> None:
    async with new_database("sqlite", tmp_path) as url:
        settings = make_settings(tmp_path / "state", url, dashboard_session_ttl_s=60)
        running = await start_control_plane(settings)
        try:
            async with aiohttp.ClientSession() as http:
                api = Api(running.url, http, running)
                cookie = session_cookie(await sign_in(api))
                # The same token encrypted 61 s ago, as a browser left open would hold it.
                box = running.plane.box
                key = box.derive_fernet_key(SESSION_KEY_PURPOSE)
                old = Fernet(key).encrypt_at_time(ADMIN_TOKEN.encode(), int(time.time()) - 61)
                assert (await get_with_cookie(api, "/v1/instances", cookie))[0] == 200
                status, body = await get_with_cookie(api, "/v1/instances", old.decode())
                assert status == 401
                assert "expired" in body
        finally:
            await running.stop()


async def test_sign_out_clears_cookie(api: Api) -> None:
    await sign_in(api)
    async with api.http.post(
        api.url + "/dashboard/logout", headers={"Origin": api.url}, allow_redirects=False
    ) as reply:
        assert reply.status == 303
        assert reply.headers["Location"] == LOGIN
        header = reply.headers["Set-Cookie"]
    assert header.startswith(f'{SESSION_COOKIE}=""') or f"{SESSION_COOKIE}=;" in header
    assert "Max-Age=0" in header or "expires=Thu, 01 Jan 1970" in header


# --- pages and static files ------------------------------------------------------------


async def test_dashboard_redirects_to_sign_in(api: Api) -> None:
    async with api.http.get(api.url + "/dashboard", allow_redirects=False) as reply:
        assert reply.status == 302
        assert reply.headers["Location"] == "/dashboard/"
    status, _ = await get_with_cookie(api, "/dashboard/", "")
    assert status == 303


async def test_signed_in_gets_app(api: Api) -> None:
    cookie = session_cookie(await sign_in(api))
    status, text = await get_with_cookie(api, "/dashboard/", cookie)
    assert status == 200
    assert '<main id="view"' in text
    status, _ = await get_with_cookie(api, LOGIN, cookie)
    assert status == 303


async def test_pages_send_security_headers(api: Api) -> None:
    for path in (LOGIN, "/dashboard/static/js/main.js"):
        async with api.http.get(api.url + path) as reply:
            assert reply.status == 200, path
            policy = reply.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
            assert reply.headers["X-Content-Type-Options"] == "nosniff"
    async with api.http.get(api.url + LOGIN) as reply:
        assert reply.headers["Cache-Control"] == "no-store"
    async with api.http.get(api.url + "/dashboard/static/dashboard.css") as reply:
        assert reply.headers["Cache-Control"] == "no-cache"


async def test_api_responses_keep_their_headers(api: Api) -> None:
    status, _ = await api.call("GET", "/v1/instances")
    assert status == 200
    async with api.http.get(
        api.url + "/v1/instances", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as reply:
        assert "Content-Security-Policy" not in reply.headers


async def test_static_files_stay_inside(api: Api) -> None:
    for path in ("/dashboard/static/../__init__.py", "/dashboard/static/%2e%2e/__init__.py"):
        async with api.http.get(api.url + path) as reply:
            body = await reply.text()
            assert reply.status in (403, 404), path
            assert "add_dashboard" not in body


# --- what the package ships ----------------------------------------------------------------


def test_chart_library_vendored_with_license() -> None:
    library = STATIC_DIR / "vendor" / "chartjs" / "chart.umd.min.js"
    assert library.stat().st_size > 100_000
    assert library.read_text(encoding="utf-8").startswith("/*!\n * Chart.js v4.")
    license_text = (STATIC_DIR / "vendor" / "chartjs" / "LICENSE.md").read_text(encoding="utf-8")
    assert "The MIT License" in license_text


@pytest.mark.parametrize("suffix", ["html", "js", "css"])
def test_own_files_load_nothing_remote(suffix: str) -> None:
    own = [
        path
        for path in STATIC_DIR.rglob(f"*.{suffix}")
        if "vendor" not in path.relative_to(STATIC_DIR).parts
    ]
    assert own, f"no .{suffix} files under {STATIC_DIR}"
    for path in own:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), path
        assert "localStorage" not in text, path
        assert "sessionStorage" not in text, path
