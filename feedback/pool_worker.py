"""The pool's generator in a process of its own: an inference copy of the policy that fills the pool without
sharing the page's interpreter.

In one process, a refill's generation loop (HF `generate` spends most of its time in Python, token by token) holds
the GIL that the page's request handlers need: measured on 2 cores, click-to-next p95 was 7.5-13 s while a refill
ran, whatever the threads' priorities. A child process has its own interpreter, so the page only competes with it
for cores, and the operating system shares those.

The child loads the policy and the reward classifier from the run config, holds one version (`serve`) and answers
`generate` calls with scored generations; the parent side (`ProcessGenerator`) is what the pool calls, with the
same `Generator` interface as `feedback.model.PolicyGenerator`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from collections.abc import Callable, Sequence

from feedback.types import NewGeneration, PromptRef

log = logging.getLogger(__name__)

# The pool process's CPU priority below the page's and the round's (Linux nice): a click's handler and a round's step
# take the cores when they need them, the refill takes what is left. A round waits for the refill while the pool is
# low (`feedback.rounds`), so the refill is not starved by one; `--round-nice 19` puts the round below it.
POOL_NICE = 10


class WorkerError(RuntimeError):
    """The pool process failed a request, or died; the message says what it raised."""


def _serve_requests(conn, cfg, nice: int) -> None:
    """The child's loop: load the models, then answer (command, args) requests until "stop" or the pipe closes."""
    import os

    import torch

    from feedback.model import PolicyGenerator, StudioModel
    from rlhf.models import load_policy
    from rlhf.scorers import load_scorer

    default_threads = torch.get_num_threads()
    try:
        policy = load_policy(cfg.policy, cfg.device, log=lambda m: None)
        scorer = load_scorer(cfg.reward, cfg.device)
        # the version switching of the app's model (`_load_weights`), on this copy, without a second copy
        model = StudioModel(cfg, policy, scorer, version_id=0)
    except Exception as err:  # noqa: BLE001 - sent to the parent, which shows it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    if nice and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError as err:
            log.warning("could not lower the pool process's CPU priority: %s", err)
    conn.send(("ready", None))
    gen: PolicyGenerator = model.generator
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, OSError):
            return  # the app has gone
        if command == "stop":
            return
        try:
            if command == "serve":
                version_id, adapter_path = args
                model.use_version(version_id, adapter_path)
                result = version_id
            elif command == "generate":
                prompts, n_threads = args
                torch.set_num_threads(n_threads or default_threads)
                result = gen.generate(prompts)
            else:
                raise ValueError(f"unknown request {command!r}")
            conn.send(("ok", result))
        except Exception as err:  # noqa: BLE001 - the parent raises it as a WorkerError
            conn.send(("error", f"{type(err).__name__}: {err}"))


class ProcessGenerator:
    """Pool items from a child process holding an inference copy of the policy (see the module's doc).

    Args:
        cfg: the run config the child loads the policy and classifier from.
        version_id: the version the child starts with (the base version, whose adapter is the fresh one).
        nice: how far below the app's CPU priority the child runs once loaded (Linux nice; 0: the same).
    """

    def __init__(self, cfg, version_id: int, nice: int = POOL_NICE):
        self.cfg = cfg
        self.version_id = version_id
        # the CPU threads the child may use for the next call (None: all of them), read at each call, so a round
        # training beside it can take its half of the cores; `StudioModel` sets it
        self.share: Callable[[], int | None] | None = None
        self.lock = threading.RLock()  # one request at a time on the pipe
        self._nice = nice
        self._adapter: str | None = None  # the adapter folder of the version the child holds (None: base)
        self._spawn()

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked locks, no copy of the page's threads
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve_requests,
            args=(child, self.cfg, self._nice),
            name="rlhf-studio-pool",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._ready = False

    def _call(self, command: str, args):
        with self.lock:
            replaced = self._ready and not self._process.is_alive()
            if replaced:  # it died since it was ready (killed, out of memory): a new one, holding the same version
                log.warning("the pool process had stopped (exit code %s); starting a new one", self._process.exitcode)
                self._conn.close()
                self._spawn()
            self.wait_ready()
            if replaced and self._adapter is not None:
                self._send("serve", (self.version_id, self._adapter))
            return self._send(command, args)

    def _send(self, command: str, args):
        try:
            self._conn.send((command, args))
        except (OSError, ValueError) as err:
            raise WorkerError(f"the pool process has stopped (exit code {self._process.exitcode})") from err
        return self._receive(command)

    def _receive(self, what: str):
        try:
            status, result = self._conn.recv()
        except (EOFError, OSError) as err:
            code = self._process.exitcode
            raise WorkerError(
                f"the pool process stopped while {what} (exit code {code}); the next refill starts a new one"
            ) from err
        if status == "error":
            raise WorkerError(result if what == "loading" else f"the pool process failed {what}: {result}")
        return result

    def wait_ready(self) -> None:
        """Block until the child has loaded its models (raises WorkerError, with the child's error, if it could not)."""
        with self.lock:
            if not self._ready:
                self._receive("loading")
                self._ready = True

    def serve(self, version_id: int, adapter_path: str | None) -> None:
        """Generate from this version from now on (its adapter folder; None: the base version)."""
        self._call("serve", (version_id, adapter_path))
        self.version_id, self._adapter = version_id, adapter_path

    def generate(self, prompts: Sequence[PromptRef]) -> list[NewGeneration]:
        threads = self.share() if self.share is not None else None
        return self._call("generate", (list(prompts), threads))

    def close(self) -> None:
        """Stop the child (it also ends with the app: it is a daemon process and stops when the pipe closes)."""
        try:
            with self.lock:
                self._conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()
