"""The real page in headless Debian Chromium (driven by playwright), on tiny models built in a temp dir.

Logs in, rates three items with buttons and one with a keyboard shortcut, undoes one, switches to Blend at 0.5,
runs a 1-step round, compares, and checks the store afterwards. An injected `<img onerror>` / `<script>` in a
prompt and a response must show as text and run nothing. Screenshots of each tab go to
$RLHF_STUDIO_ARTIFACTS (default: test-artifacts/ in the checkout).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
XSS_PROMPT = '#Person1#: look <img src=x onerror="window.__xss=1"> here\n#Person2#: <script>window.__xss=2</script> ok.'
XSS_RESPONSE = '<img src=x onerror="window.__xss=3"><b>bold?</b>'

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("RLHF_STUDIO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium package (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from bench.app_latency import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def artifacts() -> Path:
    out = Path(os.environ.get("RLHF_STUDIO_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def studio_url(tiny_studio_options):
    """The app on tiny models, with an admin account and an injected HTML prompt + response in the pool."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app import add_users, launch
    from feedback.io import add_prompt_texts
    from feedback.studio import Studio
    from feedback.types import NewGeneration

    options = tiny_studio_options(heldout=8, max_new_tokens=6)
    studio = Studio(options, log_fn=lambda _: None)
    add_prompt_texts(studio.svc.Session, [(XSS_PROMPT, None)], "xss", "train")
    studio.svc.add_generations(
        studio.svc.current_version().id,
        [NewGeneration(1, XSS_PROMPT, XSS_RESPONSE, [1, 2], [3, 4], [-1.0, -1.0], 0.5, None, "test")],
    )
    add_users(studio, ["admin:admin-pass:admin"])
    studio.start(background=False)
    assert studio.ready.is_set(), studio.error
    port = _free_port()
    app, _, _ = launch(studio, "127.0.0.1", port, auth=True, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", studio
    app.close() if hasattr(app, "close") else None
    if studio.runner is not None:
        studio.runner.wait(60)
    studio.db_engine.dispose()


def _wait_for(predicate, timeout=60.0, every=0.25, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_label_train_and_compare_in_the_browser(chromium, studio_url, artifacts):
    from sqlalchemy import func, select

    from db.models import Rating, TrainingRound

    url, studio = studio_url
    page = chromium.new_page(viewport={"width": 1280, "height": 1400})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # ---- log in --------------------------------------------------------------------------------------------
    page.goto(url)
    page.get_by_label("username").fill("admin")
    page.get_by_label("password").fill("admin-pass")
    page.get_by_role("button", name="Login").click()
    prompt = page.locator("#prompt textarea")
    _wait_for(lambda: prompt.input_value().startswith("#Person1#"), what="the first item")
    progress = page.locator("#progress")

    def rated() -> int:
        return int(progress.inner_text().split("you:")[1].split("·")[0].strip())

    # ---- the injected prompt shows as text, and nothing ran ------------------------------------------------
    assert prompt.input_value() == XSS_PROMPT
    assert page.locator("#response textarea").input_value() == XSS_RESPONSE
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x']").count() == 0
    page.screenshot(path=str(artifacts / "01-label.png"), full_page=True)

    # ---- three ratings with buttons, one with a key, one undo ------------------------------------------------
    page.click("#rate-toxic")
    _wait_for(lambda: rated() == 1, what="first rating")
    page.click("#rate-ok")
    _wait_for(lambda: rated() == 2, what="second rating")
    page.click("#rate-toxic")
    _wait_for(lambda: rated() == 3, what="third rating")
    page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a text box
    page.keyboard.press("2")
    _wait_for(lambda: rated() == 4, what="keyboard rating")
    page.click("#undo")
    _wait_for(lambda: rated() == 3, what="undo")
    assert page.evaluate("window.__xss") is None

    # ---- reward mode Blend 0.5, a 1-step round -----------------------------------------------------------------
    page.get_by_role("tab", name="Reward & training").click()
    page.get_by_role("radio", name="Blend").check()
    page.get_by_role("spinbutton", name="number input for Human weight").fill("0.5")
    page.get_by_role("spinbutton", name="number input for Human weight").press("Enter")
    page.locator("#steps input").fill("1")
    page.locator("#batch input").fill("4")
    page.locator("#n-eval input").fill("4")
    page.click("#start-round")
    status = page.locator("#round-status")
    _wait_for(lambda: "done" in status.inner_text(), timeout=120, what="the round to finish")
    page.screenshot(path=str(artifacts / "02-reward-training.png"), full_page=True)

    # ---- compare ------------------------------------------------------------------------------------------------
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cmp-prompt textarea").fill("#Person1#: You are awful.\n#Person2#: Why do you say that?")
    page.click("#cmp-generate")
    ref_out, pol_out = page.locator("#ref-out textarea"), page.locator("#pol-out textarea")
    _wait_for(lambda: ref_out.input_value() and pol_out.input_value(), what="both answers")
    page.screenshot(path=str(artifacts / "03-compare.png"), full_page=True)

    page.get_by_role("tab", name="Data").click()
    page.get_by_role("button", name="Refresh").click()
    _wait_for(lambda: page.get_by_text("admin").count() > 0, what="the per-annotator table")
    page.screenshot(path=str(artifacts / "04-data.png"), full_page=True)
    assert page.evaluate("window.__xss") is None and not dialogs

    # ---- the store ------------------------------------------------------------------------------------------------
    svc = studio.svc
    with svc.Session.begin() as s:
        assert s.scalar(select(func.count(Rating.id))) == 3
        values = sorted(s.scalars(select(Rating.value)))
        rounds = list(s.scalars(select(TrainingRound)))
    assert values == [0, 0, 1]  # toxic, not toxic, toxic; the keyboard "not toxic" was undone
    assert len(rounds) == 1 and rounds[0].status == "done" and rounds[0].reward_mode == "blend"
    assert rounds[0].reward_weight == pytest.approx(0.5) and len(rounds[0].metrics) == 1
    current = svc.current_version()
    assert current.id == rounds[0].output_version_id and current.adapter_path
    assert (Path(current.adapter_path) / "adapter_config.json").is_file()
