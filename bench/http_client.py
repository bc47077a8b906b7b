"""The real app driven over HTTP, as a browser drives it but without one: start `app.py` on a fresh database, log
in, and run the page's events through Gradio's own queue protocol (POST `queue/join`, then read the session's
event stream until the event completes).

Shared by `bench/http_load.py` and `tests/test_http_app.py`. Each `GradioPage` is one browser tab: its own
login cookie and session hash, so the app keeps a separate `gr.State` for it, and a refusal the page would show
as a warning pop-up comes back as text in `Answer.warnings`.
"""

from __future__ import annotations

import html
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
# What the prompt box shows instead of an item (ui.label.empty_note): still loading, or nothing left for you.
PLACEHOLDERS = ("Nothing left to rate", "Loading:")
# What each binary rating button submits (ui.label.BINARY_VALUES): the stored Rating.value.
RATING_BUTTONS = {0: "rate-toxic", 1: "rate-ok"}


class GradioError(RuntimeError):
    """An event failed: an HTTP error, an error in the event stream, or no answer in time."""


@dataclass(frozen=True)
class Answer:
    """What one event sent back: new values by elem_id (an output left as it was is absent), and the warning
    pop-ups it raised."""

    values: dict[str, Any]
    warnings: list[str]


class GradioPage:
    """One browser tab of a Gradio app: log in (when `user` is given), read the page's config, run its events.

    Args:
        url: the app's address, e.g. http://127.0.0.1:7860/.
        user, password: an account of the app (`--add-user`); None when the app runs without `--auth`.
        timeout: seconds to wait for any one answer.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None, timeout: float = 120.0):
        self.http = httpx.Client(base_url=url, timeout=timeout)
        self.session_hash = uuid.uuid4().hex[:11]
        try:
            if user is not None:
                r = self.http.post("/login", data={"username": user, "password": password or ""})
                if r.status_code != 200:
                    raise GradioError(f"login as {user!r} refused: {r.status_code} {r.text[:200]}")
            r = self.http.get("/config")
            r.raise_for_status()
        except BaseException:
            self.http.close()
            raise
        config = r.json()
        self.prefix = config.get("api_prefix", "/gradio_api")
        self.components = {c["id"]: c for c in config["components"]}
        self.dependencies = config["dependencies"]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GradioPage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- finding events ---------------------------------------------------------------------------------------
    def _elem_id(self, component_id: int) -> str | None:
        return self.components[component_id]["props"].get("elem_id")

    def event(self, elem_id: str, trigger: str) -> int:
        """The id (fn_index) of the event `trigger` ('click', 'submit', ...) of the component `elem_id`."""
        for dep in self.dependencies:
            if any(self._elem_id(cid) == elem_id and ev == trigger for cid, ev in dep["targets"]):
                return dep["id"]
        raise KeyError(f"the page has no {trigger!r} event on #{elem_id}")

    def api(self, api_name: str) -> int:
        """The id of the event Gradio named `api_name` (e.g. 'tick', for a timer, which has no elem_id)."""
        for dep in self.dependencies:
            if dep.get("api_name") == api_name:
                return dep["id"]
        raise KeyError(f"the page has no event named {api_name!r}")

    # ---- running one ------------------------------------------------------------------------------------------
    def call(self, fn: int, values: dict[str, Any] | None = None) -> Answer:
        """Run event `fn` as the browser would: each input is `values[elem_id]` when given, else what the page
        shows before anyone edits it (its config value); a gr.State goes as null (the app keeps its value)."""
        dep = self.dependencies[fn]
        values = values or {}
        data = []
        for cid in dep["inputs"]:
            comp, elem_id = self.components[cid], self._elem_id(cid)
            if elem_id in values:
                data.append(values[elem_id])
            else:
                data.append(None if comp["type"] == "state" else comp["props"].get("value"))
        body = {
            "data": data,
            "fn_index": fn,
            "session_hash": self.session_hash,
            "event_data": None,
            "trigger_id": dep["targets"][0][0] if dep["targets"] else None,
        }
        try:
            r = self.http.post(f"{self.prefix}/queue/join", json=body)
            if r.status_code != 200:
                raise GradioError(f"queue/join of event {fn}: {r.status_code} {r.text[:200]}")
            event_id = r.json()["event_id"]
            output, warnings = self._wait(event_id)
        except httpx.HTTPError as err:
            raise GradioError(f"event {fn}: {type(err).__name__}: {err}") from err
        return Answer(_values(output.get("data") or [], [self._elem_id(c) for c in dep["outputs"]]), warnings)

    def _wait(self, event_id: str) -> tuple[dict, list[str]]:
        """Read this session's event stream until `event_id` completes: (its output, its warning pop-ups)."""
        warnings: list[str] = []
        params = {"session_hash": self.session_hash}
        with self.http.stream("GET", f"{self.prefix}/queue/data", params=params) as stream:
            if stream.status_code != 200:
                raise GradioError(f"queue/data: {stream.status_code}")
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                kind = msg.get("msg")
                if kind == "unexpected_error":
                    raise GradioError(f"event stream: {msg.get('message')}")
                if msg.get("event_id") != event_id:
                    continue
                if kind == "log" and msg.get("level") in ("warning", "error"):
                    warnings.append(html.unescape(str(msg.get("log"))))  # as the pop-up reads
                elif kind == "process_completed":
                    if not msg.get("success"):
                        raise GradioError(f"event failed: {str(msg.get('output'))[:300]}")
                    return msg.get("output") or {}, warnings
        raise GradioError(f"the event stream closed before event {event_id} completed")


def _values(data: list, elem_ids: list[str | None]) -> dict[str, Any]:
    """Output values by elem_id: a plain value, or an update's "value"; updates that leave the value are skipped."""
    out: dict[str, Any] = {}
    for elem_id, value in zip(elem_ids, data, strict=False):
        if elem_id is None:
            continue
        if isinstance(value, dict) and value.get("__type__") == "update":
            if "value" in value:
                out[elem_id] = value["value"]
        else:
            out[elem_id] = value
    return out


# ---- the Label tab ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shown:
    """The item on an annotator's screen: its prompt and response, as stored (Prompt.text, Generation.response)."""

    prompt: str
    response: str


class LabelPage(GradioPage):
    """The Label tab of one signed-in annotator: open it, and rate the item on screen (binary)."""

    def open(self) -> tuple[Shown | None, list[str]]:
        """What loading the page (or the page's one-second timer, while nothing is on screen) shows: the next item,
        or None while there is none."""
        answer = self.call(self.event("name", "submit"))
        return _shown(answer), answer.warnings

    def rate(self, value: int) -> tuple[Shown | None, list[str]]:
        """Press the rating button of `value` (0 toxic, 1 not toxic); returns the next item shown."""
        answer = self.call(self.event(RATING_BUTTONS[value], "click"))
        return _shown(answer), answer.warnings


def _shown(answer: Answer) -> Shown | None:
    prompt = answer.values.get("prompt")
    if not isinstance(prompt, str) or prompt.startswith(PLACEHOLDERS):
        return None
    return Shown(prompt, answer.values.get("response") or "")


# ---- the app as a process -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppProcess:
    """`python app.py ARGS --port PORT --data-dir DATA`, its output in DATA/app.log (a pipe nobody reads would
    fill up and block the app).

    Args:
        args: app.py options (models, database, accounts).
        data_dir: the app's --data-dir (created).
        database_url: passed as --database-url; None: the SQLite file in the data dir ($DATABASE_URL is unset
            for the app, so a benchmark's server URL never leaks into a SQLite run).
    """

    args: list[str]
    data_dir: Path
    database_url: str | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "app.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> AppProcess:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("DATABASE_URL", None)
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([*cmd, *self.args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_http(self, timeout: float = 180.0) -> None:
        """Until the web server answers (the models may still be loading: the page says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                httpx.get(self.url + "config", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise TimeoutError(f"{self.url} did not answer in {timeout:.0f} s:\n{self.log_text()[-2000:]}")

    def wait_log(self, text: str, timeout: float = 180.0) -> None:
        """Until the app's output has `text` (e.g. "models loaded in": rounds and Compare can start)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{text!r} not in the app's output after {timeout:.0f} s:\n{self.log_text()[-2000:]}"
                )
            time.sleep(0.3)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_item(url: str, user: str | None, password: str | None, timeout: float = 180.0) -> None:
    """Until the app hands out a first rateable item (start-up has generated the first pool)."""
    deadline = time.monotonic() + timeout
    with LabelPage(url, user, password) as page:
        while time.monotonic() < deadline:
            shown, _ = page.open()
            if shown is not None:
                return
            time.sleep(0.5)
    raise TimeoutError(f"no rateable item from {url} within {timeout:.0f} s")


@contextmanager
def fresh_postgres_database(server_url: str, prefix: str = "rlhf_http") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `server_url` (its URL), dropped afterwards."""
    from sqlalchemy import text

    from db.session import make_engine

    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
