"""What every tab shares: the per-tab user state, pop-ups, refusals, binding callbacks, links and versions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from feedback.types import Item, PairItem
from ui.text import plain

HEAVY = "heavy"  # generation, evaluation and training share one queue slot


@dataclass
class UserState:
    """Per browser tab: who is labeling, with which kind, and what is on screen."""

    annotator_id: int | None = None
    name: str = ""
    role: str = "annotator"
    kind: str = "binary"
    item: Item | None = None
    pair: PairItem | None = None
    token: str = ""  # request id of the submit for the item on screen: a double click stores one rating
    skipped_pairs: tuple[tuple[int, int], ...] = ()  # pairs put aside in this tab (binary skips are stored)
    layout: tuple | None = None  # (kind, reveal, buttons on) as last sent to the page; None before the first view


def info(message: str) -> None:
    """A pop-up; Gradio renders Markdown and HTML in it, so any text from a user or a file goes in as `plain`."""
    gr.Info(plain(message))


def errors_to_page(fn):
    """ValueErrors (bad input, missing models, refusals) become a warning pop-up and change nothing on the page:
    a raised gr.Error would stamp "Error" over every output (the ratings table included)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            gr.Warning(plain(err))
            return gr.skip()  # one skip leaves every output as it was

    return wrapper


def bind(fn, /, **bound):
    """`functools.partial(fn, **bound)` for a callback whose bound parameters are keyword-only. Gradio finds the
    `gr.Request` parameter through the function's annotations, which a partial object hides, so this returns a
    plain function with the partial's signature and `fn`'s annotations."""
    part = functools.partial(fn, **bound)

    @functools.wraps(fn)
    def bound_fn(*args, **kwargs):
        return part(*args, **kwargs)

    bound_fn.__signature__ = inspect.signature(part)
    return bound_fn


def login(request: gr.Request | None) -> str | None:
    """The signed-in account of a request (None when the app runs without logins)."""
    return getattr(request, "username", None) if request is not None else None


def who(svc, auth: bool, state: UserState, request: gr.Request | None, name: str) -> UserState:
    """The annotator of this tab: the login name with auth, else the name typed on the page."""
    wanted = (login(request) or name or "").strip() or "annotator"
    if state.annotator_id is None or state.name != wanted:
        found = svc.annotator(wanted)
        role = found.role if auth else "admin"  # without logins the app is single-team: everyone may train
        state = dataclasses.replace(state, annotator_id=found.id, name=found.name, role=role, item=None, pair=None)
    return state


def require_admin(state: UserState) -> None:
    if state.role != "admin":
        raise ValueError(f"{state.name} is an annotator; only an admin may do this")


def link_markdown(label: str, file_name: str, token: str, minutes: int) -> str:
    """Markdown for an owner-only download link. The file name is ours and the token URL-safe; both still go
    through `plain`."""
    return f"[{plain(label)}: {plain(file_name)}](exports/{token}) (the link works for {minutes} minutes, for you only)"


def download_link(studio, path: Path, owner: str | None, label: str, keep: bool = False) -> str:
    """A link to `path` that only `owner` can follow (see `feedback.downloads`)."""
    token = studio.downloads.add(path, owner, keep=keep)
    return link_markdown(label, path.name, token, round(studio.downloads.ttl / 60))


# ---- policy versions, as the dropdowns of the training and compare tabs name them --------------------------------
def version_label(v) -> str:
    return f"{v.id}: {v.name}" + (" (current)" if v.is_current else "")


def version_id(choice: str) -> int:
    return int(str(choice).split(":", 1)[0])


def version_choices(versions) -> tuple[list[str], str | None]:
    """The dropdown's choices and its value (the current version)."""
    labels = [version_label(v) for v in versions]
    return labels, next((version_label(v) for v in versions if v.is_current), None)


def version_updates(studio, dropdowns) -> dict:
    """Every version dropdown offers all versions with the current one chosen."""
    labels, current = version_choices(studio.svc.versions())
    return {d: gr.update(choices=labels, value=current) for d in dropdowns}
