"""Untrusted text (names, prompts, file and column names, error messages) shown safely in the page.

Gradio renders HTML and Markdown in `gr.Markdown` and in `gr.Error` / `gr.Warning` / `gr.Info` pop-ups, so a
name such as ``<img src="http://...">`` or ``![x](http://...)`` would become a live element that fetches from
another host. `plain` turns every ASCII punctuation character into a numeric character reference: the browser
shows the very same characters, but neither the Markdown parser (no ``[``, ``(``, ``*``, ``http:`` left to
recognise) nor the HTML one (no ``<``) sees any syntax in them.
"""

from __future__ import annotations

import string

_PUNCTUATION = frozenset(string.punctuation)


def plain(text: object) -> str:
    """`text` as literal characters in Markdown or HTML.

    >>> plain("<b>hi</b>")
    '&#60;b&#62;hi&#60;&#47;b&#62;'
    >>> plain("![x](http://e.com/a.png)")
    '&#33;&#91;x&#93;&#40;http&#58;&#47;&#47;e&#46;com&#47;a&#46;png&#41;'
    >>> plain("Ann Lee 2")
    'Ann Lee 2'
    """
    return "".join(f"&#{ord(c)};" if c in _PUNCTUATION else c for c in str(text))


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """A count with its noun in the right number.

    >>> counted(1, "step"), counted(20, "step"), counted(0, "rating")
    ('1 step', '20 steps', '0 ratings')
    >>> counted(1, "rating or comparison", "ratings and comparisons")
    '1 rating or comparison'
    """
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"
