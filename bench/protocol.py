"""JSON-lines request/reply between the benchmark driver and its worker processes (standard library only).

Workers run in two interpreters (ours in the app's venv, trl 0.11.4 in its own), so the driver talks to both the
same way: one JSON object per line on the worker's stdin, one reply per line on its stdout. Anything a library
prints goes to stderr, so stray output can never corrupt a reply.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(handlers: dict[str, Callable[..., dict]]) -> None:
    """Answer requests {"cmd": name, **kwargs} with handlers[name](**kwargs) until "quit" or end of input."""
    reply_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    replies = os.fdopen(reply_fd, "w", buffering=1)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd = req.pop("cmd")
        if cmd == "quit":
            break
        try:
            out = handlers[cmd](**req)
            out.setdefault("peak_rss_mb", peak_rss_mb())
            replies.write(json.dumps({"ok": True, **out}) + "\n")
        except Exception as err:  # noqa: BLE001 - the driver reports it with the worker's traceback on stderr
            import traceback

            traceback.print_exc()
            replies.write(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}"}) + "\n")
    replies.close()


class Worker:
    """A worker subprocess; `call(cmd, **kw)` sends one request and waits for its reply."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None, cwd: str | None = None):
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=cwd
        )

    def call(self, cmd: str, **kwargs: Any) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()}) during {cmd!r}; see its stderr")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"worker {self.name} failed on {cmd!r}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=120)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.proc.poll() is None:
            self.proc.kill()
        self.close()
