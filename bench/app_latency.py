"""How quickly the app is usable, measured in a real browser (Debian Chromium through playwright):

- launch to first rateable item: from starting `python app.py` on a fresh data dir (new database, prompt import,
  model loading, first pool) to the first item shown on the page;
- click to next item: from a click on a rating button to the next item shown, p50 / p95 over `--clicks`
  clicks, paced like a quick annotator (`--pace` seconds between a shown item and the next click).

    .venv/bin/python -m bench.app_latency                       # the embedded default (SmolLM2, profanity-check)
    .venv/bin/python -m bench.app_latency -- --policy DIR ...   # anything after -- goes to app.py
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, deadline: float) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


def measure(app_args: list[str], clicks: int, pace: float, timeout: float) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
        env.pop("DATABASE_URL", None)  # a fresh SQLite store in the temp data dir
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--data-dir", data, *app_args]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = t0 + timeout
            _wait_http(url, deadline)
            t_page = time.monotonic() - t0
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
                    if proc.poll() is not None:
                        raise RuntimeError(f"app.py exited: {proc.stderr.read()[-2000:]}")
                    current = shown()
                    time.sleep(0.05)
                t_first = time.monotonic() - t0
                latencies, waited_for_pool = [], 0
                for n in range(clicks):
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
                        if time.monotonic() - start > 120:
                            raise TimeoutError(f"click {n}: no next item within 120 s")
                        time.sleep(0.01)
                    latencies.append(time.monotonic() - start)
                    waited_for_pool += waited
                    current = now
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "page_up_s": t_page,
        "first_item_s": t_first,
        "clicks": len(latencies),
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
        "max_ms": max(latencies) * 1000,
        "pool_waits": waited_for_pool,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description="launch-to-first-item and click-to-next-item times of the app")
    p.add_argument("--clicks", type=int, default=50)
    p.add_argument("--pace", type=float, default=1.0, help="seconds between an item shown and the next click")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args(own)
    cpu = cpu_model()
    print(f"# app latency, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {cpu}")
    print(f"# app.py {' '.join(app_args) or '(embedded default)'}; {args.clicks} clicks, {args.pace} s pace\n")
    r = measure(app_args, args.clicks, args.pace, args.timeout)
    print(
        "| page served | first rateable item | clicks | click to next item p50 | p95 | max | clicks that waited for the pool |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {r['page_up_s']:.1f} s | {r['first_item_s']:.1f} s | {r['clicks']} | {r['p50_ms']:.0f} ms | "
        f"{r['p95_ms']:.0f} ms | {r['max_ms']:.0f} ms | {r['pool_waits']} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
