"""Tiny helpers to write MyST Markdown safely from the registry's plain text."""

from __future__ import annotations

import re
import string

# CommonMark lets any ASCII punctuation be backslash-escaped; escaping all of it means registry text
# such as "a * b", "'<component>.<name>'", "|t - t'|" or "$" can never turn into markup.
_PUNCT = set(string.punctuation)


def text(s: str) -> str:
    """Plain text as literal Markdown inline content."""
    return "".join("\\" + ch if ch in _PUNCT else ch for ch in str(s))


def code(s: str) -> str:
    """Inline code; backticks are never in our identifiers, but refuse them rather than break."""
    s = str(s)
    if "`" in s:
        raise ValueError(f"code: expected text without backticks; got {s!r}")
    return f"`{s}`"


def ref(role: str, title: str, target: str) -> str:
    """A cross-reference such as {doc}`title <target>`.  Role text is not Markdown (a backslash
    would show), so it is taken verbatim and characters that would end it are refused."""
    if any(ch in title + target for ch in "`<>"):
        raise ValueError(f"ref: expected no backticks or angle brackets; got {title!r} <{target!r}>")
    return f"{{{role}}}`{title} <{target}>`"


def math(latex: str) -> str:
    """Inline math through MyST's ``{math}`` role."""
    if "`" in latex:
        raise ValueError(f"math: expected LaTeX without backticks; got {latex!r}")
    return f"{{math}}`{latex}`"


def math_block(latex: str) -> str:
    return f"```{{math}}\n{latex}\n```\n"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table.  Cells are Markdown already (escape text with :func:`text`); a raw pipe is an error."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError("table: every row needs one cell per column")

    def cell(c):
        c = str(c).replace("\n", " ")
        if re.search(r"(?<!\\)\|", c):  # a raw pipe would split the cell
            raise ValueError(f"table: unescaped '|' in cell {c!r}")
        return c

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
