"""A tiny, safe Markdown renderer for project guidelines.

The text is HTML-escaped first, so nothing an admin (or a pasted document) writes can become a tag or
a script; then a small subset is turned into HTML: ``#`` headings, paragraphs, ``-``/``*`` and ``1.``
lists, ``**bold**``, ``*italic*``, ```code``` and ``[links](https://...)`` (http, https and mailto
only). Enough for guidelines; anything else stays as plain text.
"""

from __future__ import annotations

import html
import re

from markupsafe import Markup

INLINE_RULES = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\(((?:https?://|mailto:)[^\s)\"']+)\)"),
     r'<a href="\2" rel="noopener noreferrer" target="_blank">\1</a>'),
)
LIST_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.)\s+(.*)$")
ORDERED_ITEM = re.compile(r"^\s*\d+\.\s+")
HEADING = re.compile(r"^(#{1,4})\s+(.*)$")


def render_inline(escaped: str) -> str:
    for pattern, replacement in INLINE_RULES:
        escaped = pattern.sub(replacement, escaped)
    return escaped


def render_markdown(text: str) -> Markup:
    """Safe HTML for a Markdown subset (see the module docstring)."""
    blocks: list[str] = []
    paragraph: list[str] = []
    list_items: list[str] = []
    list_tag = "ul"

    def flush() -> None:
        nonlocal paragraph, list_items
        if paragraph:
            blocks.append("<p>" + render_inline(" ".join(paragraph)) + "</p>")
            paragraph = []
        if list_items:
            items = "".join(f"<li>{render_inline(item)}</li>" for item in list_items)
            blocks.append(f"<{list_tag}>{items}</{list_tag}>")
            list_items = []

    for raw_line in html.escape(text, quote=True).splitlines():
        line = raw_line.rstrip()
        heading, item = HEADING.match(line), LIST_ITEM.match(line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1)) + 1  # the page title is h1
            blocks.append(f"<h{level}>{render_inline(heading.group(2))}</h{level}>")
        elif item:
            if paragraph:
                flush()
            if not list_items:
                list_tag = "ol" if ORDERED_ITEM.match(line) else "ul"
            list_items.append(item.group(1))
        elif list_items:
            list_items[-1] += " " + line.strip()
        else:
            paragraph.append(line.strip())
    flush()
    return Markup("\n".join(blocks))
