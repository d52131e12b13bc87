"""Guest log-in over plain HTTP/1.1 on asyncio streams, many at a time.

Like a browser: GET the login page for the CSRF cookie, then POST
`/accounts/guest/` with the token; the answer sets the session cookie.
"""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    wait_s: float = 30.0,
) -> tuple[int, dict[str, list[str]], bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_s)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        raw = await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    head_lines = head.decode("latin-1").split("\r\n")
    status = int(head_lines[0].split(" ")[1])
    parsed: dict[str, list[str]] = {}
    for line in head_lines[1:]:
        name, _, value = line.partition(":")
        parsed.setdefault(name.strip().lower(), []).append(value.strip())
    return status, parsed, content


def _cookies(headers: dict[str, list[str]]) -> dict[str, str]:
    jar: dict[str, str] = {}
    for value in headers.get("set-cookie", []):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(value)
        for name, morsel in cookie.items():
            jar[name] = morsel.value
    return jar


async def guest_login(host: str, port: int) -> str:
    """A new guest user's `Cookie:` header value (CSRF + session)."""
    origin = f"http://{host}:{port}"
    status, headers, _ = await request(host, port, "GET", "/accounts/login/")
    jar = _cookies(headers)
    token = jar.get("csrftoken")
    if status != 200 or not token:
        raise RuntimeError(f"GET /accounts/login/ answered {status} without a CSRF cookie")
    body = f"csrfmiddlewaretoken={token}".encode()
    status, headers, _ = await request(
        host,
        port,
        "POST",
        "/accounts/guest/",
        headers={
            "Cookie": f"csrftoken={token}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": origin,
            "Referer": origin + "/",
            "X-CSRFToken": token,
        },
        body=body,
    )
    jar.update(_cookies(headers))
    if status not in (200, 302) or "sessionid" not in jar:
        raise RuntimeError(f"POST /accounts/guest/ answered {status} without a session")
    return f"csrftoken={jar['csrftoken']}; sessionid={jar['sessionid']}"


async def guest_logins(host: str, port: int, count: int, concurrency: int = 32) -> list[str]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> str:
        async with semaphore:
            for attempt in range(3):
                try:
                    return await guest_login(host, port)
                except (OSError, RuntimeError, TimeoutError):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.2)
            raise AssertionError("unreachable")

    return await asyncio.gather(*(one() for _ in range(count)))
