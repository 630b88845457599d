"""The chat page and the blind test in a real browser: headless Chromium from the system's packages (Debian's
chromium and chromium-driver), driven by Selenium through that driver, so nothing is fetched. The server is the
real one (serving.pages over serving.api) on the tiny run's twin, with an API key the pages are given in their
link. A hostile name and hostile messages must stay text. Skipped, saying why, where there is no browser.

TWIN_SCREENSHOTS=DIR saves each page at a desktop's and a phone's width there, for a person to look at."""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from chat.loading import load_twin, source_of_run
from chat.people import People
from data.sessions import Turn
from fidelity.markdown import verdict_markdown
from fidelity.plan import Context
from fidelity.verdict import ANSWERS_FILE, read_verdict
from model.generation import Generator, SamplingConfig
from serving.api import build_app
from serving.engine import Engine
from serving.judging import BlindTest, Moment, moment_key
from serving.pages import build_site
from tests.test_serving_api import RunningServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)",
    ),
]

from selenium.webdriver.chrome.service import Service  # noqa: E402  (after the skip: selenium may be missing)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

KEY = "sk-browser-key"
HOSTILE = "<img src=x onerror=window.pwned=1>"
PARTNER = "Катя Морозова"
DESKTOP, PHONE = (1280, 800), (390, 844)
WAIT_S = 60


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """The tiny run's twin behind the pages, with the key; it knows the hostile name as one of the run's people,
    and its blind test has one held-out-like moment where every name and message is hostile."""
    source = source_of_run(tiny_run)
    model, tokenizer = load_twin(source, torch.device("cpu"), torch.float32)
    people = People(HOSTILE, {**source.people.partners, HOSTILE: PARTNER})
    engine = Engine(Generator(model, 512, torch.device("cpu")), tokenizer)
    context = Context(HOSTILE, [Turn(PARTNER, ["<b>bold?</b>", "<script>window.pwned=2</script>"])], ["<i>real</i>"])
    run = tmp_path_factory.mktemp("judged-run")
    test = BlindTest(run, [Moment(moment_key(context), context)])
    test.sampling = replace(
        test.sampling, max_new_tokens=8
    )  # the report's 128 tokens, shorter: a random model never stops
    app = build_site(build_app(engine, people, SamplingConfig(max_new_tokens=4), KEY), engine, people, KEY, test)
    running = RunningServer(app)
    yield running.url.removesuffix("/v1"), run
    running.stop()
    engine.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # a driver path: Selenium Manager never runs
    yield driver
    driver.quit()


def at_width(driver, size: tuple[int, int]) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size[0] < 600},
    )


def wait_until(driver, condition) -> None:
    WebDriverWait(driver, WAIT_S).until(lambda _: condition())


def ready(driver) -> None:
    wait_until(driver, lambda: driver.execute_script("return document.body.dataset.ready") == "yes")


def texts(driver, selector: str) -> list[str]:
    return [node.get_attribute("textContent") for node in driver.find_elements(By.CSS_SELECTOR, selector)]


def nothing_ran(driver) -> None:
    """No hostile name or message became markup, or ran."""
    assert driver.execute_script("return window.pwned") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "main img, main b, main i, main script")


def fits(driver, name: str) -> None:
    """At a phone's width the page scrolls down only, never sideways; screenshots where asked."""
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        at_width(driver, size)
        if size == PHONE:
            assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE[0], name
        if os.environ.get("TWIN_SCREENSHOTS"):
            Path(os.environ["TWIN_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(Path(os.environ["TWIN_SCREENSHOTS"]) / f"{name}-{label}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_message_sent_on_the_chat_page_gets_a_streamed_reply_bubble(server, browser):
    url, _ = server
    browser.get(f"{url}/#key={KEY}")
    ready(browser)
    assert "key=" not in browser.current_url  # taken out of the address bar, kept for the tab
    assert browser.execute_script("return document.getElementById('twin').value") == HOSTILE
    assert browser.execute_script("return document.getElementById('me').value") == PARTNER  # their partner
    browser.find_element(By.ID, "text").send_keys("<b>hi</b>")
    browser.find_element(By.ID, "send").click()
    wait_until(
        browser,
        lambda: (
            browser.find_elements(By.CSS_SELECTOR, ".turn.theirs")
            and browser.find_element(By.ID, "send").is_displayed()
        ),
    )  # the reply has ended
    assert texts(browser, ".turn.mine .name") == [PARTNER] and texts(browser, ".turn.mine .bubble") == ["<b>hi</b>"]
    assert texts(browser, ".turn.theirs .name") == [HOSTILE]
    replies = texts(browser, ".turn.theirs .bubble")
    assert replies and all(reply.strip() for reply in replies) and not texts(browser, ".error")
    nothing_ran(browser)
    fits(browser, "chat")

    browser.find_element(By.ID, "regenerate").click()  # the reply, written again in its place
    wait_until(browser, lambda: browser.find_element(By.ID, "send").is_displayed())
    assert texts(browser, ".turn .name") == [PARTNER, HOSTILE]
    talk_turns = browser.find_element(By.ID, "talk-turns")
    talk_turns.clear()
    talk_turns.send_keys("2")
    browser.find_element(By.ID, "talk").click()  # two twins: the partner's turn, then the twin's
    wait_until(
        browser, lambda: len(texts(browser, ".turn .name")) == 4 and browser.find_element(By.ID, "send").is_displayed()
    )
    assert texts(browser, ".turn .name") == [PARTNER, HOSTILE, PARTNER, HOSTILE]
    browser.find_element(By.ID, "start-over").click()
    assert texts(browser, ".turn") == [] and browser.find_element(By.ID, "empty").is_displayed()


def test_a_judges_pick_is_stored_survives_a_reload_and_the_report_reads_it(server, browser):
    url, run = server
    browser.get(f"{url}/judge#key={KEY}")
    ready(browser)
    wait_until(browser, lambda: browser.find_element(By.ID, "moment").is_displayed())
    assert browser.find_element(By.ID, "who").get_attribute("textContent") == HOSTILE
    assert texts(browser, "#conversation .name") == [PARTNER]
    assert texts(browser, "#conversation .bubble") == ["<b>bold?</b>", "<script>window.pwned=2</script>"]
    assert "<i>real</i>" in texts(browser, ".candidate .bubble")
    nothing_ran(browser)
    fits(browser, "judge")
    judge = browser.execute_script("return localStorage.getItem('twin-judge')")
    browser.find_element(By.CSS_SELECTOR, "button[data-choice='1']").click()
    wait_until(browser, lambda: browser.execute_script("return document.body.dataset.judged") == "1")

    browser.refresh()  # the judge comes back: their answer is the server's, the moment is not shown again
    ready(browser)
    assert browser.execute_script("return document.body.dataset.judged") == "1"
    assert "judged every moment" in browser.find_element(By.ID, "status").text
    assert browser.execute_script("return localStorage.getItem('twin-judge')") == judge
    (answer,) = json.loads((run / ANSWERS_FILE).read_text())["answers"]
    assert (answer["judge"], answer["speaker"], answer["picked"] in ("twin", "real")) == (judge, HOSTILE, True)
    (verdict,) = read_verdict(run)
    assert (verdict.speaker, verdict.answers, verdict.judges) == (HOSTILE, 1, 1)
    assert any(line.startswith("| <img src=x onerror=window.pwned=1> | ") for line in verdict_markdown([verdict]))
