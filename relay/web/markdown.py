"""A repository's README as HTML that is safe to put in a page.

Markdown is rendered by markdown-it-py (CommonMark, plus tables and strikethrough) with
raw HTML switched off: HTML written in a README is shown as text, escaped, never passed
through. The result then goes through nh3 (the ammonia sanitiser) with an allowlist of
tags, attributes and URL schemes, so nothing that runs (script, event handlers,
`javascript:` URLs, style) reaches the page even if the renderer had a flaw. Links get
`rel="noopener noreferrer nofollow"`. Images keep their `src`; the page's
Content-Security-Policy lets only the relay's own and `data:` images load. No `style`
attribute is kept (the policy allows no inline style), so table columns are not aligned.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

# The README is read up to this many bytes; a longer one is shown as a notice instead.
MAX_README_BYTES = 512 * 1024
# A README in one of these formats is rendered; any other name is shown as plain text.
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdown", ".mkd")

TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre",
    "s", "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},  # language-<name> of a fenced block
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
    ["table", "strikethrough"]
)


def sanitise(html: str) -> Markup:
    """`html` with everything outside the allowlist removed (script and style with their
    content)."""
    clean = nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        strip_comments=True,
    )
    return Markup(clean)  # sanitised just above


def render_markdown(text: str) -> Markup:
    return sanitise(_renderer.render(text))


def render_readme(name: str, data: bytes) -> Markup:
    """The README named `name` (its bytes, already within MAX_README_BYTES) as HTML:
    Markdown rendered and sanitised, any other text in a <pre>, escaped."""
    text = data.decode("utf-8", "replace")
    if name.lower().endswith(MARKDOWN_SUFFIXES):
        return render_markdown(text)
    return Markup("<pre class=readme-text>") + escape(text) + Markup("</pre>")
