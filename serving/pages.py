"""The pages a person opens in a browser: a chat with the twin at / and the blind test at /judge.

They are plain files in serving/web (no build step, nothing fetched from elsewhere) and talk to the server as
any client does: the chat page to the OpenAI routes, streaming, the judge page to serving.judging's routes.
The pages themselves hold nothing private and load without the API key; everything they fetch needs it,
where the server has one: the page asks for it and keeps it for the tab (sessionStorage).

Names and messages reach the page only as JSON and are shown as text, never markup. The Content-Security-Policy
is the second wall: only the server's own scripts and styles run, none inline, nothing is loaded from
elsewhere, so a name like <img src=x onerror=...> could run nothing even if it were taken for markup.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

from chat.people import People
from serving.api import Gate, add_error_handlers
from serving.connections import Limits
from serving.engine import Engine
from serving.judging import BlindTest, judge_routes

WEB = Path(__file__).with_name("web")
PAGES = {
    "/": "chat.html",
    "/judge": "judge.html",
    "/page.js": "page.js",
    "/chat.js": "chat.js",
    "/judge.js": "judge.js",
    "/style.css": "style.css",
}
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a restarted server's new page, never a stale one
}


def build_site(
    api: FastAPI,
    engine: Engine,
    people: People,
    api_key: str | None,
    blind_test: BlindTest | None,
    limits: Limits | None = None,
) -> FastAPI:
    """The pages, the routes only they use, and under them the API app (serving.api.build_app) as it is. The
    API's gate stands in front of the site too: the key before any body, and the body's limits."""
    site = FastAPI(title="twin", docs_url=None, redoc_url=None, openapi_url=None)
    site.add_middleware(Gate, api_key=api_key, limits=limits or Limits(), open_paths=frozenset(PAGES))
    add_error_handlers(site)
    for route, name in PAGES.items():
        site.add_api_route(route, page(WEB / name), methods=["GET"], include_in_schema=False)

    @site.get("/chat/people")
    async def chat_people() -> dict:
        """Who the chat page offers: the run's people, the twinned one first, and whom each wrote to most
        (who you are by default). Without a run, no one: the page takes any names."""
        names = sorted(people.names, key=lambda name: (name != people.target, name))
        return {"names": names, "partners": people.partners}

    site.include_router(judge_routes(blind_test, engine))
    site.mount("/", api)  # last: the pages' routes are matched first
    return site


def page(file: Path) -> Callable[[], Awaitable[Response]]:
    """The route that answers with `file`, with the headers above."""
    body = file.read_bytes()  # read once: the package's files, not the user's
    media_type = TYPES[file.suffix] + "; charset=utf-8"

    async def serve_page() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return serve_page
