"""The inspector in a real browser: headless Chromium driven by selenium, over the fixtures and over
a live proxy carrying the openai SDK's traffic.

Every wait is for a condition, with a generous deadline that only guards against a hang. The
browser and its driver are the system's (Debian: ``chromium``, ``chromium-driver``); without them
these tests are skipped, unless ``WIRECAP_REQUIRE_BROWSER=1`` (CI) makes that a failure. With
``WIRECAP_SCREENSHOTS=DIR`` they save the screenshots the README shows.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import shutil
import threading
from pathlib import Path

import openai
import pytest
import trio
from captures import Spec
from fake_llm import chat_stream_events, llm_upstream, openai_calls
from upstream import ScriptedUpstream

from wirecap.capture import open_capture
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.proxy.app import make_redactor, make_writer
from wirecap.proxy.config import build_config
from wirecap.proxy.server import ProxyServer
from wirecap.replay.serve import InThread
from wirecap.ui.app import run_ui

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
#: Hang guard for every wait on the page.
DEADLINE = 60


def _browser_paths() -> tuple[str, str] | None:
    binary = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="session")
def browser():
    paths = _browser_paths()
    if paths is None:
        if os.environ.get("WIRECAP_REQUIRE_BROWSER"):
            pytest.fail(
                "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
            )
        pytest.skip("no chromium and chromedriver on PATH")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    driver.set_page_load_timeout(DEADLINE)
    yield driver
    driver.quit()


def wait(driver, condition, message=""):
    """Wait for ``condition(driver)`` to be true (and return it); DEADLINE is a hang guard."""

    def check(d):
        try:
            return condition(d)
        except StaleElementReferenceException:
            return False  # the list was redrawn under us: look again

    return WebDriverWait(driver, DEADLINE, poll_frequency=0.05).until(check, message)


def click(driver, css: str) -> None:
    """Click what ``css`` finds, again if the page redrew it between finding and clicking."""

    def clicked(d):
        d.find_element(By.CSS_SELECTOR, css).click()
        return True

    wait(driver, clicked, f"could not click {css}")


def rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#rows tr")


def row_ids(driver):
    return [r.get_attribute("data-id") for r in rows(driver)]


def downloads_to(driver, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(directory)}
    )


def downloaded(directory: Path, name: str) -> bytes:
    path = directory / name
    WebDriverWait(None, DEADLINE, poll_frequency=0.05).until(
        lambda _: path.exists() and not list(directory.glob("*.crdownload")),
        f"{name} was not downloaded",
    )
    return path.read_bytes()


def screenshot(driver, name: str) -> None:
    """Save the page (the whole of it, 1440 pixels wide) when WIRECAP_SCREENSHOTS names a
    directory."""
    directory = os.environ.get("WIRECAP_SCREENSHOTS")
    if directory:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1440, min(max(height, 700), 1800))
        driver.save_screenshot(str(Path(directory) / name))
        driver.set_window_size(1440, 1000)


def set_theme(driver, theme: str) -> None:
    if driver.execute_script("return document.documentElement.dataset.theme") != theme:
        driver.find_element(By.TAG_NAME, "body").send_keys("t")
    wait(
        driver, lambda d: d.execute_script("return document.documentElement.dataset.theme") == theme
    )


def ui_in_thread(*targets) -> InThread:
    return InThread(functools.partial(run_ui, list(targets), host="127.0.0.1", port=0))


def type_into(driver, element_id: str, text: str) -> None:
    """Replace what a field holds, as a person would (each key fires the page's input event)."""
    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)
    if text:
        field.send_keys(text)


def test_the_fixtures_list_sort_filter_search_open_and_download(browser, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the page names the capture as given: "fixtures"
    copy = Path("fixtures")
    shutil.copytree(FIXTURES, copy)
    with open_capture(copy) as capture:
        exchanges = {e.id: e for e in capture.exchanges()}
    with ui_in_thread(copy) as ui:
        browser.get(ui.url)
        set_theme(browser, "light")
        wait(browser, lambda d: len(rows(d)) == 10, "the ten fixtures are listed")
        screenshot(browser, "ui-list.png")

        browser.find_element(By.CSS_SELECTOR, "th[data-sort=duration]").click()
        wait(browser, lambda d: "sort=duration" in d.current_url)
        longest = max(exchanges.values(), key=lambda e: e.duration_ns or 0).id
        wait(browser, lambda d: row_ids(d)[:1] == [longest], "the longest exchange comes first")

        type_into(browser, "status", "4xx")
        wait(browser, lambda d: len(rows(d)) == 1, "the status filter narrows the list")
        assert rows(browser)[0].find_element(By.CSS_SELECTOR, "td.num").text == "429"
        type_into(browser, "status", "")
        wait(browser, lambda d: len(rows(d)) == 10)
        type_into(browser, "q", "sky blue")
        wait(browser, lambda d: len(rows(d)) == 1, "the text search narrows the list")
        assert "/ollama/api/chat" in rows(browser)[0].text
        browser.find_element(By.ID, "clear").click()
        wait(browser, lambda d: len(rows(d)) == 10)

        click(browser, "#finding option[value=truncated-stream]")
        wait(browser, lambda d: len(rows(d)) == 1, "the finding filter narrows the list")
        [cut_id] = row_ids(browser)
        assert "truncated-stream" in rows(browser)[0].text

        click(browser, f"#rows tr[data-id='{cut_id}']")
        wait(browser, lambda d: d.current_url.endswith(f"#/x/{cut_id}"), "a click opens it")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline svg rect.res"))
        bars = browser.find_elements(
            By.CSS_SELECTOR, "#timeline svg rect.req, #timeline svg rect.res"
        )
        assert len(bars) == len(exchanges[cut_id].chunks)  # one bar per body read
        assert browser.find_elements(By.CSS_SELECTOR, "#timeline line.mark.ttft")
        findings = browser.find_element(By.CSS_SELECTOR, ".findings").text
        assert "truncated-stream" in findings and "stream ended without data: [DONE]" in findings

        downloads_to(browser, tmp_path / "downloads")
        click(browser, ".actions a[href$='/raw/response']")
        got = downloaded(tmp_path / "downloads", f"{cut_id}-response.bin")
        assert got == exchanges[cut_id].response_bytes()

        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        wait(browser, lambda d: not d.find_element(By.ID, "list-view").get_attribute("hidden"))
        browser.find_element(By.ID, "clear").click()
        wait(browser, lambda d: len(rows(d)) == 10)
        ids = row_ids(browser)
        classes = [r.get_attribute("class") for r in rows(browser)]
        start = next(i for i, c in enumerate(classes) if "selected" in c)
        step = 1 if start < len(ids) - 1 else -1
        body = browser.find_element(By.TAG_NAME, "body")
        keys = ["j", "j", "k"] if step == 1 else ["k", "k", "j"]
        for key in keys:
            body.send_keys(key)
        wait(
            browser,
            lambda d: "selected" in rows(d)[start + step].get_attribute("class"),
            "j j k moves the selection one row down",
        )
        body.send_keys(Keys.ENTER)
        wait(
            browser,
            lambda d: d.current_url.endswith(f"#/x/{ids[start + step]}"),
            "Enter opens the selected exchange",
        )

        responses_id = next(i for i, e in exchanges.items() if e.target == "/openai/v1/responses")
        browser.get(ui.url + f"#/x/{responses_id}")  # the URL of one exchange, opened afresh
        wait(browser, lambda d: "Say hi and call a tool" in d.find_element(By.ID, "panel").text)
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline svg rect.res"))
        click(browser, "button[data-tab=answer]")
        answer = wait(browser, lambda d: d.find_element(By.ID, "panel").text)
        assert "Hi there" in answer and '"q": "paris"' in answer
        screenshot(browser, "ui-detail.png")
        click(browser, "button[data-tab=raw]")
        raw = wait(browser, lambda d: d.find_element(By.ID, "raw-bytes").text)
        assert raw.startswith("HTTP/1.1 200 \\r\\n")


HOSTILE_PROMPT = "<script>window.__pwned = 'prompt'</script>"
HOSTILE_ANSWER = "<img src=x onerror=\"window.__pwned = 'answer'\">"


def hostile_capture(directory: Path) -> str:
    """A capture whose path, model, prompt and answer are markup that would run if the page
    parsed it."""
    directory.mkdir()
    answer = json.dumps(
        {
            "model": "<b id=bold>model</b>",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": HOSTILE_ANSWER}}],
        }
    ).encode()
    spec = Spec(
        "fedcba987654",
        model="<b id=bold>model</b>",
        chunks=[answer],
        path="/v1/chat/completions?q=<svg/onload=window.__pwned='path'>",
    )
    records = spec.records(0)
    original = json.dumps({"model": spec.model, "messages": [{"role": "user", "content": "hi"}]})
    body = json.dumps(
        {"model": spec.model, "messages": [{"role": "user", "content": HOSTILE_PROMPT}]}
    )
    for i, record in enumerate(records):
        if getattr(record, "dir", None) == "req":
            records[i] = dataclasses.replace(record, data=body.encode())
        elif isinstance(getattr(record, "head", None), bytes) and record.head.startswith(b"POST"):
            head = record.head.replace(
                f"Content-Length: {len(original)}".encode(), f"Content-Length: {len(body)}".encode()
            )
            records[i] = dataclasses.replace(record, head=head)
    writer = SegmentSink(directory, SegmentHeader({"enabled": False}))
    writer.open()
    writer.write_records(records)
    writer.close()
    return spec.id


def test_a_captured_script_never_runs(browser, tmp_path):
    exchange_id = hostile_capture(tmp_path / "hostile")
    with ui_in_thread(tmp_path / "hostile") as ui:
        browser.get(ui.url)
        wait(browser, lambda d: len(rows(d)) == 1)
        assert "<svg/onload=window.__pwned='path'>" in rows(browser)[0].text
        click(browser, "#rows tr")
        panel = wait(browser, lambda d: d.find_element(By.ID, "panel").text)
        assert HOSTILE_PROMPT in panel
        click(browser, "button[data-tab=answer]")
        wait(browser, lambda d: HOSTILE_ANSWER in d.find_element(By.ID, "panel").text)
        click(browser, "button[data-tab=raw]")
        wait(browser, lambda d: "onerror" in d.find_element(By.ID, "raw-bytes").text)
        assert browser.execute_script("return window.__pwned === undefined")
        assert not browser.find_elements(
            By.CSS_SELECTOR, "#detail-view img, #rows img, #bold, svg[onload]"
        )
        assert browser.current_url.endswith(f"#/x/{exchange_id}")


class LiveProxy:
    """A scripted OpenAI-style upstream and a capturing proxy in front of it, in a thread of their
    own. Requests whose prompt says ``hold`` stream their first event, then each of the others
    once :attr:`steps` lets it go."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.steps = threading.Semaphore(0)
        self.server: ProxyServer | None = None
        self.writer = None

    def release(self) -> None:
        """Let every held event go."""
        self.steps.release(1000)

    async def upstream(self, ex) -> None:
        if ex.request.target != "/v1/chat/completions":
            return await llm_upstream(ex)
        body = await ex.read_body()
        if b"hold" not in body:
            ex.read_body = _replay_body(body)
            return await llm_upstream(ex)
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        first, *rest = chat_stream_events()
        await ex.send_data(first)
        for event in rest:
            await trio.to_thread.run_sync(self.steps.acquire, abandon_on_cancel=True)
            await ex.send_data(event)
        await ex.end()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            upstream = ScriptedUpstream(self.upstream)
            await nursery.start(upstream.run)
            config = build_config(
                out=self.out, listen="127.0.0.1:0", routes=[f"/openai/={upstream.url}"]
            )
            self.writer = make_writer(config, make_redactor(config))
            self.server = ProxyServer(config, self.writer, console=io.StringIO())
            await nursery.start(self.writer.run)
            _host, port = await nursery.start(self.server.run)
            task_status.started(f"http://127.0.0.1:{port}")

    async def stop(self) -> None:
        self.release()
        assert self.server is not None and self.writer is not None
        self.server.shutdown()
        await self.server.wait_stopped()
        await self.writer.wait_finished()


def _replay_body(body: bytes):
    async def read_body() -> bytes:
        return body

    return read_body


def test_a_live_proxy_with_the_openai_sdk(browser, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the page names the capture as given: "captures"
    live = LiveProxy(Path("captures"))
    with InThread(live.serve, live.stop) as proxy, ui_in_thread(live.out) as ui:
        base_url = proxy.url + "/openai/v1"
        browser.get(ui.url)
        wait(browser, lambda d: "No exchanges yet" in d.find_element(By.ID, "empty").text)
        browser.execute_script("window.__same_page = true")

        openai_calls(base_url)  # one JSON answer, one stream
        wait(browser, lambda d: len(rows(d)) == 2, "the SDK's two exchanges appear")

        client = openai.OpenAI(
            base_url=base_url, api_key="sk-test-0123456789abcdefghij", max_retries=0
        )
        text: list[str] = []

        def held_stream() -> None:
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hold on"}], stream=True
            )
            text.extend(c.choices[0].delta.content or "" for c in stream if c.choices)

        caller = threading.Thread(target=held_stream)
        caller.start()
        try:
            held_id = wait(
                browser,
                lambda d: d.find_element(By.CSS_SELECTOR, "#rows tr.live").get_attribute("data-id"),
                "a stream in flight is listed and marked",
            )
            live_row = f"#rows tr.live[data-id='{held_id}'] td.outcome"
            wait(
                browser,
                lambda d: "streaming · 1 read," in d.find_element(By.CSS_SELECTOR, live_row).text,
            )
            live.steps.release()  # one more event: the row grows without a reload
            wait(
                browser,
                lambda d: "streaming · 2 reads," in d.find_element(By.CSS_SELECTOR, live_row).text,
                "the streaming row grows as its chunks land",
            )
            set_theme(browser, "dark")
            screenshot(browser, "ui-live-list-dark.png")
            click(browser, f"#rows tr[data-id='{held_id}']")
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".dhead .badge.live"))
            set_theme(browser, "light")
            click(browser, "button[data-tab=answer]")
            wait(browser, lambda d: "answer so far" in d.find_element(By.ID, "panel").text.lower())
            assert "Hel" in browser.find_element(By.ID, "panel").text
            live.steps.release()  # "lo": the open detail grows too
            wait(browser, lambda d: "Hello" in d.find_element(By.ID, "panel").text)
        finally:
            live.release()
            caller.join(DEADLINE)
        assert "".join(text) == "Hello world"
        wait(
            browser, lambda d: not d.find_elements(By.CSS_SELECTOR, ".dhead .badge.live"), "it ends"
        )
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline svg rect.res"))
        click(browser, "button[data-tab=answer]")
        wait(browser, lambda d: "Hello world" in d.find_element(By.ID, "panel").text)

        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        wait(browser, lambda d: len(rows(d)) == 3)
        assert held_id in row_ids(browser)
        assert not browser.find_elements(By.CSS_SELECTOR, "#rows tr.live")
        type_into(browser, "q", "hold")
        wait(browser, lambda d: row_ids(d) == [held_id], "the search finds the held prompt")
        assert browser.execute_script("return window.__same_page === true")  # never reloaded
