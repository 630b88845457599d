"""serving/pages.py and serving/web: the pages load without the key, everything they fetch needs it; they are the
package's own files, fetch nothing from elsewhere and put no name or message into the page as markup; the judge
routes store an answer and refuse what is not one. (tests/test_browser.py drives them in a real browser.)"""

import re

import pytest
from fastapi.testclient import TestClient

from chat.people import People
from model.generation import SamplingConfig
from serving.api import build_app
from serving.judging import BlindTest
from serving.pages import PAGES, WEB, build_site
from tests.test_judging import JUDGE, FakeEngine, moments

KEY = "sk-page-key"
PEOPLE = People("Misha", {"Misha": "Olga", "Olga": "Misha"})


def site(tmp_path=None, api_key=None) -> TestClient:
    engine = FakeEngine()
    test = BlindTest(tmp_path, moments(2)) if tmp_path else None
    return TestClient(build_site(build_app(engine, PEOPLE, SamplingConfig(), api_key), engine, PEOPLE, api_key, test))


def test_the_pages_load_without_the_key_and_what_they_fetch_needs_it():
    client = site(api_key=KEY)
    for route, name in PAGES.items():
        page = client.get(route)
        assert page.status_code == 200 and page.content == (WEB / name).read_bytes()
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
    for route in ("/chat/people", "/v1/models", f"/judge/api/pair?judge={JUDGE}"):
        refused = client.get(route)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", route
    people = client.get("/chat/people", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert people == {"names": ["Misha", "Olga"], "partners": {"Misha": "Olga", "Olga": "Misha"}}
    assert client.get("/nowhere").status_code == 401  # without the key nothing says which routes exist
    nowhere = client.get("/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    assert nowhere.json()["error"]["type"] == "not_found_error"  # the API's errors, as before


def test_the_pages_are_plain_local_files_that_show_text_as_text():
    files = {path.name: path.read_text(encoding="utf-8") for path in WEB.iterdir()}
    assert set(files) == set(PAGES.values())
    for name, text in files.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name  # no CDN, no network
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", text), name
        if name.endswith(".html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\son[a-z]+=", text), name  # nothing inline


def test_without_a_blind_test_the_judge_routes_say_how_to_start_one():
    error = site().get(f"/judge/api/pair?judge={JUDGE}").json()["error"]
    assert error["code"] == "no_blind_test" and "--judge" in error["message"]


def test_a_judge_gets_a_pair_and_their_answer_is_stored(tmp_path):
    client = site(tmp_path)
    shown = client.get(f"/judge/api/pair?judge={JUDGE}").json()
    assert shown["speaker"] == "Misha" and shown["turns"][0]["speaker"] == "Olga" and len(shown["candidates"]) == 2
    assert (shown["judged"], shown["moments"]) == (0, 2)
    stored = client.post("/judge/api/answer", json={"judge": JUDGE, "pair": shown["pair"], "choice": 1})
    assert stored.json() == {"judged": 1, "moments": 2}
    again = client.post("/judge/api/answer", json={"judge": JUDGE, "pair": shown["pair"], "choice": 1})
    assert again.status_code == 409 and again.json()["error"]["code"] == "pair_closed"
    assert (tmp_path / "blind_test.json").exists()


@pytest.mark.parametrize(
    "route, body",
    [
        ("/judge/api/pair?judge=short", None),
        ("/judge/api/pair?judge=" + "x" * 20 + "%3Cb%3E", None),
        ("/judge/api/answer", {"judge": JUDGE, "pair": "p", "choice": 2}),
        ("/judge/api/answer", {"judge": "../../etc", "pair": "p", "choice": 0}),
    ],
)
def test_a_bad_judge_request_is_a_400(tmp_path, route, body):
    client = site(tmp_path)
    answer = client.post(route, json=body) if body else client.get(route)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    assert not (tmp_path / "blind_test.json").exists()
