"""The real page in headless Debian Chromium (driven by playwright), on tiny models built in a temp dir.

Logs in, rates in all three kinds (buttons and keys), skips and undoes across kinds, starts a long round and
watches its phases in the progress bar until Cancel stops it, switches to Blend at 0.5, runs a 1-step round,
compares, and checks the store afterwards. An injected `<img onerror>` / `<script>` in a
prompt and a response must show as text and run nothing. Screenshots of each tab go to
$RLHF_STUDIO_ARTIFACTS (default: test-artifacts/ in the checkout).
"""

from __future__ import annotations

import json
import os
import re
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
    studio.close()


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

    from db.models import Comparison, Rating, TrainingRound

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

    # ---- pairwise: rate a pair, skip one (another comes), then undo across kinds ---------------------------------
    kind = page.locator("#kind")
    resp_a = page.locator("#response-a textarea")
    kind.get_by_label("Pairwise (A vs B)").check()
    _wait_for(lambda: resp_a.input_value(), timeout=90, what="a first pair")
    page.click("#pick-a")
    _wait_for(lambda: rated() == 4, what="a comparison")
    _wait_for(lambda: resp_a.input_value(), timeout=90, what="a second pair")
    shown = (page.locator("#prompt textarea").input_value(), resp_a.input_value())
    page.click("#skip")
    _wait_for(
        lambda: (page.locator("#prompt textarea").input_value(), resp_a.input_value()) != shown,
        timeout=90,
        what="another pair after skip",
    )
    kind.get_by_label("Binary (toxic / not toxic)").check()
    _wait_for(lambda: page.locator("#rate-ok").is_visible(), what="the binary buttons")
    page.click("#rate-ok")
    _wait_for(lambda: rated() == 5, what="a binary rating after the pair")
    page.click("#undo")
    _wait_for(lambda: rated() == 4, what="undo of the binary rating")
    page.click("#undo")
    _wait_for(lambda: rated() == 3, what="undo of the comparison")
    _wait_for(lambda: kind.get_by_label("Pairwise (A vs B)").is_checked(), what="the selector to follow the undo")
    assert page.locator("#pick-a").is_visible() and not page.locator("#rate-ok").is_visible()
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("b")  # the pair is back, and its keys work
    _wait_for(lambda: rated() == 4, what="the pair rated again with a key")
    kind.get_by_label("1-5 harmlessness").check()
    _wait_for(lambda: page.locator("#rate-4").is_visible(), what="the 1-5 buttons")
    page.click("#rate-4")
    _wait_for(lambda: rated() == 5, what="a 1-5 rating")
    kind.get_by_label("Binary (toxic / not toxic)").check()
    _wait_for(lambda: page.locator("#rate-ok").is_visible(), what="back to binary")

    # ---- a long round shows its phases in a progress bar (not an input), and Cancel stops it --------------------
    page.get_by_role("tab", name="Reward & training").click()
    # the items rated on the Label tab since the page loaded are in the reward preview as soon as the tab opens
    grid = page.locator("#preview [role=grid]")
    _wait_for(lambda: int(grid.get_attribute("aria-rowcount") or 0) - 1 >= 3, what="the rated items in the preview")
    page.get_by_role("radio", name="Model").check()
    page.locator("#steps input").fill("200")
    page.locator("#batch input").fill("4")
    page.locator("#n-eval input").fill("4")
    page.click("#start-round")
    bar = page.locator("#round-progress")
    _wait_for(lambda: re.search(r"PPO step \d+/200 · \d+/200 PPO steps · about", bar.inner_text()), timeout=120,
              what="the step phase with its estimate")  # fmt: skip
    assert bar.locator("progress").count() == 1 and bar.locator("input").count() == 0
    page.click("#cancel-round")
    status = page.locator("#round-status")
    _wait_for(lambda: "interrupted" in status.inner_text(), timeout=120, what="the cancelled round to stop")

    # ---- reward mode Blend 0.5, a 1-step round -----------------------------------------------------------------
    page.get_by_role("radio", name="Blend").check()
    page.get_by_role("spinbutton", name="number input for Human weight").fill("0.5")
    page.get_by_role("spinbutton", name="number input for Human weight").press("Enter")
    page.locator("#steps input").fill("1")
    page.click("#start-round")
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
        assert s.scalar(select(func.count(Rating.id))) == 4
        values = sorted(s.scalars(select(Rating.value)))
        rounds = list(s.scalars(select(TrainingRound)))
    assert values == [0, 0, 1, 4]  # toxic, not toxic, toxic, 4 of 5; the keyboard "not toxic" was undone
    with svc.Session.begin() as s:
        assert [c.winner for c in s.scalars(select(Comparison))] == ["b"]  # "a" was undone, then "b" by key
    cancelled, done = sorted(rounds, key=lambda r: r.id)
    assert cancelled.status == "interrupted" and cancelled.output_version_id is None
    assert 0 < len(cancelled.metrics) < 200  # stopped after its current step
    assert done.status == "done" and done.reward_mode == "blend"
    assert done.reward_weight == pytest.approx(0.5) and len(done.metrics) == 1
    current = svc.current_version()
    assert current.id == done.output_version_id and current.adapter_path
    assert (Path(current.adapter_path) / "adapter_config.json").is_file()


# ---- hostile text from users and files -----------------------------------------------------------------------
EVIL = "evil.invalid"
HOSTILE_NAME = f'<img src="//{EVIL}/n.png"><form><input placeholder=password></form>![m](//{EVIL}/m.png)'
HOSTILE_KEY = f"<img src='//{EVIL}/k.png' onerror='window.__xss=4'>[k](//{EVIL}/k)"
HOSTILE_COLUMN = f"<form><input placeholder=password></form>![c](http://{EVIL}/c.png)"


def _login(page, url, user, password):
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    _wait_for(lambda: "signed in as" in page.locator("#progress").inner_text(), what=f"{user}'s page")


def _toasts(page) -> str:
    return "\n".join(page.locator("[data-testid='toast-body']").all_inner_texts())


def _injected(page) -> dict:
    """Anything the hostile strings could have turned into live elements."""
    return {
        "images": page.locator(f"img[src*='{EVIL}']").count(),
        "password inputs": page.locator("input[placeholder='password']").count(),
        "links": page.locator(f"a[href*='{EVIL}']").count(),
        "script": page.evaluate("window.__xss ?? null"),
    }


def test_hostile_names_and_files_stay_text_and_exports_stay_private(chromium, studio_url, artifacts, tmp_path):
    url, studio = studio_url
    studio.svc.set_password(HOSTILE_NAME, "hostile-pass", role="admin")
    studio.svc.set_password("bob", "bob-pass")  # an annotator
    host = url.split("/")[2]
    admin = chromium.new_context(viewport={"width": 1280, "height": 1400})
    page = admin.new_page()
    elsewhere: list[str] = []
    page.on("request", lambda r: elsewhere.append(r.url) if r.url.split("/")[2] != host else None)

    # ---- a hostile login name is shown as text in the progress line --------------------------------------------
    _login(page, url, HOSTILE_NAME, "hostile-pass")
    assert HOSTILE_NAME in page.locator("#progress").inner_text()
    page.click("#rate-toxic")
    _wait_for(lambda: _rated_by_me(page.locator("#progress").inner_text(), 1), what="a rating")

    # ---- a file with a hostile key, then a hostile column name: errors name them as text -------------------------
    page.get_by_role("tab", name="Data").click()
    bad = tmp_path / "<b>prompts<u>.jsonl"
    bad.write_text(json.dumps({HOSTILE_KEY: "hello"}) + "\n", encoding="utf-8")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    page.click("#import")
    _wait_for(lambda: HOSTILE_KEY in _toasts(page), what="the import error naming the hostile key")
    assert "promptsu.jsonl was not imported" in _toasts(page)  # Gradio strips <> from uploaded file names
    page.locator("#text-col textarea, #text-col input").first.fill(HOSTILE_COLUMN)
    page.click("#import")
    _wait_for(lambda: HOSTILE_COLUMN in _toasts(page), what="the import error naming the hostile column")

    # ---- deleting needs the typed phrase; the deleted ratings come back as a file for this admin only ----------------
    page.locator("#delete-name textarea, #delete-name input").first.fill(HOSTILE_NAME)
    page.click("#delete-ratings")
    _wait_for(lambda: "type exactly: delete " + HOSTILE_NAME in _toasts(page), what="the confirmation hint")
    assert "Error" not in page.locator("#counts").inner_text()  # a refused action leaves the table as it was
    page.locator("#delete-confirm textarea, #delete-confirm input").first.fill("delete " + HOSTILE_NAME)
    page.click("#delete-ratings")
    backup = page.locator("#delete-result a")
    _wait_for(lambda: backup.count() == 1, what="the link to the deleted ratings")
    kept = page.request.get(backup.get_attribute("href") and url + backup.get_attribute("href"))
    assert kept.status == 200 and json.loads(kept.text().splitlines()[0])["value"] == 0

    # ---- an export link works for its admin, not for another login nor for nobody ------------------------------------
    page.click("#export")
    link = page.locator("#export-link a")
    _wait_for(lambda: link.count() == 1, what="the export link")
    export_url = url + link.get_attribute("href")
    assert page.request.get(export_url).status == 200
    page.screenshot(path=str(artifacts / "05-hostile-data.png"), full_page=True)
    assert _injected(page) == {"images": 0, "password inputs": 0, "links": 0, "script": None}
    assert elsewhere == []  # not one request left the page for another host

    other = chromium.new_context()
    bob = other.new_page()
    _login(bob, url, "bob", "bob-pass")
    assert bob.request.get(export_url).status == 404
    bob.get_by_role("tab", name="Data").click()
    bob.click("#export")
    _wait_for(lambda: "only an admin may do this" in _toasts(bob), what="bob's refusal")
    assert bob.locator("#export-link a").count() == 0
    assert chromium.new_context().request.get(export_url).status == 404
    other.close()
    admin.close()


def _rated_by_me(progress: str, n: int) -> bool:
    """The progress line counts n ratings of mine ("you: n ·"); "left for you: 1..." must not pass for it."""
    import re

    return re.search(rf"(?<!for )you: {n} ·", progress) is not None


def test_without_logins_the_typed_name_survives_a_reload(chromium, studio_url):
    from sqlalchemy import select

    from app import launch
    from db.models import Annotator, Rating

    _, studio = studio_url
    port = _free_port()
    app, _, _ = launch(studio, "127.0.0.1", port, auth=False, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    page = chromium.new_page()
    page.goto(url)
    progress = page.locator("#progress")
    _wait_for(lambda: "signed in as annotator" in progress.inner_text(), what="the page")
    page.locator("#name textarea, #name input").first.fill("Zoë Lee")
    page.locator("#name textarea, #name input").first.press("Enter")
    _wait_for(lambda: "signed in as Zoë Lee" in progress.inner_text(), what="the typed name")
    _wait_for(lambda: "rlhf-studio-name" in page.evaluate("Object.keys(localStorage)"), what="the name to be kept")
    page.reload()
    _wait_for(lambda: "signed in as Zoë Lee" in progress.inner_text(), what="the name after a reload")
    assert page.locator("#name textarea, #name input").first.input_value() == "Zoë Lee"
    _wait_for(lambda: page.locator("#prompt textarea").input_value().startswith("#Person1#"), what="an item")
    page.click("#rate-ok")
    _wait_for(lambda: _rated_by_me(progress.inner_text(), 1), what="the rating")
    with studio.svc.Session.begin() as s:
        names = list(s.scalars(select(Annotator.name).join(Rating, Rating.annotator_id == Annotator.id)))
    assert names == ["Zoë Lee"]  # not "annotator"
    app.close() if hasattr(app, "close") else None
