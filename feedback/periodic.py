"""Background work on a timer: the round's heartbeat, the human reward's refit, following the current version."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def every(interval: float, work: Callable[[], object], stop: threading.Event, what: str) -> threading.Thread:
    """Call `work` every `interval` s in a daemon thread until `stop` is set. A call that raises is logged (as
    `what` failing) and the next one tries again: a missed beat or refit is not worth stopping for."""

    def loop() -> None:
        while not stop.wait(interval):
            try:
                work()
            except Exception:  # noqa: BLE001 - logged; the next call tries again
                log.exception("%s failed", what)

    thread = threading.Thread(target=loop, name=what.replace(" ", "-"), daemon=True)
    thread.start()
    return thread
