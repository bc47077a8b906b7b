"""Files the app hands to one admin (rating exports, the copy kept of deleted ratings), behind secret links.

A link names a random token, never a path. With logins, a file is served only to the account that made it;
without logins (one trusted team on one machine) the token is the only key. Exports are removed `ttl` seconds
after they were made and at every start; a file marked `keep` (the copy of deleted ratings) outlives its link.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Download:
    path: Path
    owner: str | None  # the login that may fetch it; None when the app runs without logins
    expires: float  # time.monotonic() deadline
    keep: bool  # leave the file when the link expires


class Downloads:
    """Args:
    folder: where exports are written; emptied at construction (a restart ends every link).
    ttl: seconds a link (and an export file) lives.
    """

    def __init__(self, folder: Path, ttl: float = 900.0):
        self.folder = Path(folder)
        self.ttl = ttl
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._links: dict[str, Download] = {}
        self._lock = threading.Lock()

    def new_path(self, name: str) -> Path:
        """A fresh private folder for one export; `name` must be ours (never a user's text)."""
        sub = self.folder / secrets.token_hex(8)
        sub.mkdir()
        return sub / name

    def add(self, path: Path, owner: str | None, keep: bool = False) -> str:
        """Offer `path` to `owner`; returns the link's token."""
        self.sweep()
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._links[token] = Download(Path(path), owner, time.monotonic() + self.ttl, keep)
        return token

    def get(self, token: str, user: str | None) -> Path | None:
        """The file behind `token` if `user` may have it and it has not expired; else None (say nothing more)."""
        self.sweep()
        with self._lock:
            d = self._links.get(token)
        if d is None or (d.owner is not None and d.owner != user) or not d.path.is_file():
            return None
        return d.path

    def sweep(self) -> int:
        """Drop expired links and delete their export files; returns how many went."""
        now = time.monotonic()
        with self._lock:
            gone = [t for t, d in self._links.items() if d.expires <= now]
            dropped = [self._links.pop(t) for t in gone]
        for d in dropped:
            if not d.keep and d.path.is_relative_to(self.folder):
                shutil.rmtree(d.path.parent, ignore_errors=True)
        return len(dropped)

    def __len__(self) -> int:
        with self._lock:
            return len(self._links)
