"""Untrusted text as text: `ui.text.plain` and the owner-only links of `feedback.downloads`."""

from __future__ import annotations

import doctest
import html
import time

import pytest

import ui.text
from feedback.downloads import Downloads
from ui.text import plain

HOSTILE = [
    '<img src="http://evil.invalid/a.png">',
    "<form><input placeholder=password></form>",
    "![x](http://evil.invalid/x.png) [link](https://evil.invalid/) <https://evil.invalid/>",
    "www.evil.invalid http://evil.invalid/auto *bold* _it_ `code` # heading\n- list\n> quote | a | b |",
    "&lt;img src=x&gt; &#60;script&#62; \\<b\\>",
    "Zoë 李 ✓ plain words 42",
]


def test_doctests():
    assert doctest.testmod(ui.text).failed == 0


@pytest.mark.parametrize("text", HOSTILE)
def test_plain_leaves_no_markup_and_reads_back_as_the_same_text(text):
    out = plain(text)
    assert html.unescape(out) == text  # the page shows exactly what was typed
    # no character either parser could read as syntax: only letters, digits, spaces and entity references
    stripped = "".join(out.split("&#")[0:1] + [part.split(";", 1)[1] for part in out.split("&#")[1:]])
    assert not any(c in stripped for c in "<>[]()!*_`#-|:/\\&.\"'=")


def test_a_download_is_served_to_its_owner_only_and_expires(tmp_path):
    d = Downloads(tmp_path / "exports", ttl=0.3)
    path = d.new_path("ratings.jsonl")
    path.write_text("{}\n")
    token = d.add(path, owner="alice")
    assert d.get(token, "alice") == path
    assert d.get(token, "bob") is None and d.get(token, None) is None and d.get("guess", "alice") is None
    time.sleep(0.4)
    assert d.get(token, "alice") is None and not path.exists() and not path.parent.exists()


def test_without_logins_the_token_is_the_key_and_kept_files_outlive_their_link(tmp_path):
    d = Downloads(tmp_path / "exports", ttl=0.2)
    backup = tmp_path / "deleted" / "deleted-annotator1.jsonl"
    backup.parent.mkdir()
    backup.write_text("{}\n")
    token = d.add(backup, owner=None, keep=True)
    assert d.get(token, None) == backup and d.get(token, "anyone") == backup
    time.sleep(0.3)
    assert d.sweep() == 1 and d.get(token, None) is None and backup.exists()


def test_a_restart_removes_every_export(tmp_path):
    d = Downloads(tmp_path / "exports")
    left = d.new_path("ratings.csv")
    left.write_text("a\n")
    Downloads(tmp_path / "exports")
    assert not left.exists() and list((tmp_path / "exports").iterdir()) == []
