"""`ember dashboard`: the usage log as one web page, served live on 127.0.0.1 or written to
a file to share.

The page (dashboard.html, .css and .js) draws plain SVG charts from report(), the numbers
of `ember usage --json`. Served, it asks /data.json again every few seconds, so a job in
another process shows up live; written with --html, the data is inside the file. Its
Content-Security-Policy allows only its own script and style (by hash) and requests to its
own server, so the page can reach nothing else. It never shows prompts or answers. Left
out: authentication (the server listens on 127.0.0.1 only), and charts of single calls.
"""

import base64
import hashlib
import json
import os
from importlib import resources
from typing import Any

from ._report import report

__all__ = ["PORT", "main", "page"]

PORT = 8321


def _hash(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def page(data: dict[str, Any] | None = None) -> str:
    """The page: with `data`, a snapshot of it; without, it fetches /data.json itself."""
    files = resources.files("ember")
    style, script = (files.joinpath(f"dashboard.{kind}").read_text() for kind in ("css", "js"))
    csp = (f"default-src 'none'; style-src {_hash(style)}; script-src {_hash(script)}; "
           f"connect-src '{'self' if data is None else 'none'}'; base-uri 'none'; "
           "form-action 'none'")
    embedded = "" if data is None else json.dumps(data).replace("<", "\\u003c")  # no </script>
    return files.joinpath("dashboard.html").read_text().format(
        csp=csp, style=style, script=script, data=embedded)


def serve(since: str, tag: str | None, model: str | None, port: int, browser: bool) -> None:
    """Serve the page on 127.0.0.1 until Ctrl-C; print its URL, and open it if asked."""
    import socket
    import urllib.parse
    import webbrowser

    from aiohttp import web

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def data(request: web.Request) -> web.Response:
        return web.json_response(report(since, request.query.get("tag") or None,
                                        request.query.get("model") or None))

    html, app = page(), web.Application()
    app.add_routes([web.get("/", index), web.get("/data.json", data)])
    listening = socket.create_server(("127.0.0.1", port))
    query = urllib.parse.urlencode({k: v for k, v in [("tag", tag), ("model", model)] if v})
    url = f"http://127.0.0.1:{listening.getsockname()[1]}/" + (f"?{query}" if query else "")
    print(f"ember dashboard: {url}  (Ctrl-C stops it)", flush=True)
    if browser:
        webbrowser.open(url)
    web.run_app(app, sock=listening, print=None, access_log=None)


def main(since: str, tag: str | None, model: str | None, port: int, html: str | None,
         browser: bool) -> int:
    """Write the page to the file `html`, or serve it."""
    found = report(since, tag, model)  # a bad window or model fails here, not in the page
    if html is None:
        serve(since, tag, model, port, browser)
        return 0
    with open(os.open(html, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(page(found))
    print(f"ember dashboard: wrote {html}")
    return 0
