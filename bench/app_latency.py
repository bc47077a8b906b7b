"""How quickly the app is usable, measured in a real browser (Debian Chromium through playwright):

- launch to first rateable item: from starting `python app.py` on a fresh data dir (new database, prompt import,
  model loading, first pool) to the first item shown on the page;
- click to next item: from a click on a rating button to the next item shown, p50 / p95 over `--clicks`
  clicks, paced like a quick annotator (`--pace` seconds between a shown item and the next click);
- with `--round-steps N`, the same again while a model-mode round of N steps trains (started from a second page,
  as an admin would): click to next item during the round, and the longest time the annotator saw "nothing left".

    .venv/bin/python -m bench.app_latency                       # the embedded default (SmolLM2, profanity-check)
    .venv/bin/python -m bench.app_latency -- --policy DIR ...   # anything after -- goes to app.py
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.run import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PLACEHOLDERS = ("Nothing left to rate", "Loading:")


def _say(t0: float, text: str) -> None:
    """A progress line on stderr as the run goes (a long run otherwise prints nothing until the end)."""
    print(f"[{time.monotonic() - t0:7.1f} s] {text}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_alive(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-2000:]}")


def _wait_http(url: str, deadline: float, proc: subprocess.Popen, log: Path) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        _check_alive(proc, log)
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


def _click_through(
    page, shown, current, clicks: int, pace: float, until=None, say=None
) -> tuple[list[float], int, float]:
    """Rate `clicks` items (or until `until()` is true), each `pace` s after it appeared: (click-to-next
    latencies, clicks that met an empty pool, longest wait for an item in seconds)."""
    prompt = page.locator("#prompt textarea")
    latencies, waited_for_pool, longest = [], 0, 0.0
    n = 0
    while n < clicks and not (until is not None and until()):
        if current is None:  # nothing on screen (the buttons are off): wait for an item, as a person would
            start = time.monotonic()
            while (current := shown()) is None:
                time.sleep(0.05)
            longest = max(longest, time.monotonic() - start)
            waited_for_pool += 1
        time.sleep(pace)
        before = current
        start = time.monotonic()
        page.click("#rate-ok" if n % 2 else "#rate-toxic")
        waited = False
        while True:
            now = shown()
            if now is not None and now != before:
                break
            waited = waited or prompt.input_value().startswith(PLACEHOLDERS[0])
            if time.monotonic() - start > 300:
                raise TimeoutError(f"click {n}: no next item within 300 s")
            time.sleep(0.01)
        latencies.append(time.monotonic() - start)
        waited_for_pool += waited
        longest = max(longest, latencies[-1]) if waited else longest
        current = now
        n += 1
        if say is not None and n % 10 == 0:
            f = click_figures(latencies)
            say(
                f"{n} clicks: p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f} ms, slowest {f['max_ms']:.0f} ms, "
                f"{waited_for_pool} met an empty pool"
            )
    return latencies, waited_for_pool, longest


def _timed_log(stream, path: Path, t0: float, lines: list[tuple[float, str]]) -> threading.Thread:
    """Copy the app's output to `path` as it comes, each line with its time since launch (kept in `lines` too), so a
    slow start can be split into its parts. Reading it also keeps the pipe from filling up and blocking the app."""

    def copy() -> None:
        with open(path, "w") as out:
            for line in stream:
                t = time.monotonic() - t0
                lines.append((t, line.rstrip()))
                out.write(f"[{t:7.1f} s] {line}")
                out.flush()

    thread = threading.Thread(target=copy, name="app-log", daemon=True)
    thread.start()
    return thread


def start_up_parts(lines: list[tuple[float, str]], first_item_s: float) -> list[tuple[float, str]]:
    """The app's log lines up to the first item (progress bars and warnings left out): start-up by part.

    >>> start_up_parts([(1.0, "importing ..."), (2.0, "  warnings.warn("), (3.0, ""), (9.0, "ready in 9 s")], 5.0)
    [(1.0, 'importing ...')]
    """
    noise = ("Loading weights", "warnings.warn", "* To create a public link")
    return [
        (t, text)
        for t, text in lines
        if t <= first_item_s and text.strip() and not text.strip().startswith(noise) and "Warning:" not in text
    ]


def click_figures(latencies: list[float]) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"clicks": len(latencies), "p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000, "max_ms": max(latencies) * 1000}


def measure(
    app_args: list[str],
    clicks: int,
    pace: float,
    timeout: float,
    round_steps: int = 0,
    round_eval: int | None = None,
    round_clicks: int | None = None,
) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
        env.pop("DATABASE_URL", None)  # a fresh SQLite store in the temp data dir
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--data-dir", data, *app_args]
        t0 = time.monotonic()
        say = lambda text: _say(t0, text)  # noqa: E731
        log_path = Path(data) / "app.log"
        env["PYTHONUNBUFFERED"] = "1"  # each line when it is written: the log's times split the start-up
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        app_lines: list[tuple[float, str]] = []
        reader = _timed_log(proc.stdout, log_path, t0, app_lines)
        try:
            deadline = t0 + timeout
            _wait_http(url, deadline, proc, log_path)
            t_page = time.monotonic() - t0
            say("page served")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page()
                page.goto(url)
                prompt = page.locator("#prompt textarea")
                response = page.locator("#response textarea")

                def shown() -> str | None:
                    value = prompt.input_value()
                    if value and not value.startswith(PLACEHOLDERS):
                        return value + "\x00" + response.input_value()
                    return None

                current = None
                while current is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError("no rateable item appeared")
                    _check_alive(proc, log_path)
                    current = shown()
                    time.sleep(0.05)
                t_first = time.monotonic() - t0
                say("first rateable item shown")
                latencies, waited_for_pool, _ = _click_through(page, shown, current, clicks, pace, say=say)
                during = None
                if round_steps:
                    current = shown()
                    admin = browser.new_page()
                    admin.goto(url)
                    admin.get_by_role("tab", name="Reward & training").click()
                    # the page's own load (versions, rounds) first, as a person would see it before clicking
                    admin.locator("#start-round").wait_for(state="visible")
                    admin.wait_for_timeout(3000)
                    admin.locator("#steps input").fill(str(round_steps))
                    if round_eval is not None:
                        admin.locator("#n-eval input").fill(str(round_eval))
                    admin.click("#start-round")
                    status = admin.locator("#round-status")
                    t_round = time.monotonic()
                    admin.wait_for_function(
                        "/running|queued/.test(document.querySelector('#round-status').innerText)", timeout=60_000
                    )

                    say(f"round of {round_steps} steps started")
                    last_status = [""]

                    def round_over() -> bool:
                        text = status.inner_text()
                        if text != last_status[0]:
                            last_status[0] = text
                            say("round: " + " ".join(text.split())[:160])
                        return not re.search("running|queued", text)

                    lat, waits, longest = _click_through(
                        page, shown, current, round_clicks or 10**6, pace, until=round_over, say=say
                    )
                    during = click_figures(lat) | {
                        "pool_waits": waits,
                        "longest_wait_s": longest,
                        "round_s": time.monotonic() - t_round,
                        "round_status": status.inner_text()[:200],
                    }
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
            reader.join(10)
            kept = Path(tempfile.gettempdir()) / "app_latency-app.log"
            kept.write_text(log_path.read_text())
            say(f"the app's log: {kept}")
    return {"page_up_s": t_page, "first_item_s": t_first, **click_figures(latencies), "pool_waits": waited_for_pool} | {
        "during_round": during,
        "start_up": start_up_parts(app_lines, t_first),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description="launch-to-first-item and click-to-next-item times of the app")
    p.add_argument("--clicks", type=int, default=50)
    p.add_argument("--pace", type=float, default=1.0, help="seconds between an item shown and the next click")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--round-steps", type=int, default=0, help="also measure while a round of this many steps trains")
    p.add_argument("--round-eval", type=int, default=None, help="the round's held-out prompts (default: the page's)")
    p.add_argument(
        "--round-clicks", type=int, default=None, help="stop clicking after this many during the round [its end]"
    )
    args = p.parse_args(own)
    cpu = cpu_model()
    print(f"# app latency, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {cpu}")
    print(f"# app.py {' '.join(app_args) or '(embedded default)'}; {args.clicks} clicks, {args.pace} s pace\n")
    r = measure(app_args, args.clicks, args.pace, args.timeout, args.round_steps, args.round_eval, args.round_clicks)
    print(
        "| page served | first rateable item | clicks | click to next item p50 | p95 | max | clicks that waited for the pool |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {r['page_up_s']:.1f} s | {r['first_item_s']:.1f} s | {r['clicks']} | {r['p50_ms']:.0f} ms | "
        f"{r['p95_ms']:.0f} ms | {r['max_ms']:.0f} ms | {r['pool_waits']} |"
    )
    print("\nStart-up, the app's own log up to the first item (seconds since launch):\n")
    for t, text in r["start_up"]:
        print(f"    {t:6.1f} s  {text}")
    d = r["during_round"]
    if d:
        print(
            f"\nDuring a {args.round_steps}-step model-mode round ({d['round_s']:.0f} s; ended: {d['round_status']!r}):\n"
        )
        print(
            "| clicks | click to next item p50 | p95 | max | clicks that met an empty pool | longest wait for an item |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| {d['clicks']} | {d['p50_ms']:.0f} ms | {d['p95_ms']:.0f} ms | {d['max_ms']:.0f} ms | "
            f"{d['pool_waits']} | {d['longest_wait_s']:.1f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
