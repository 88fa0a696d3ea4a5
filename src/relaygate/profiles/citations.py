"""What counts as a documentation citation for a profile deviation.

A deviation waives a FAQ rule for one relay, so it must rest on a promise the relay makes to its
users: its documentation. A citation is

* ``https://…`` (or ``http://``) naming the page and its section: a ``#fragment``, or
  `` § Section title`` after the URL; or
* ``package:<distribution>/<path> § Section``: a documentation file shipped in the relay's own
  package (its README as installed, a docs folder).

A pointer into source code (a ``.py``/``.go``/``.ts``/``.js`` file, a GitHub blob of code) is not
documentation: a behaviour only the code shows is a finding, not a waiver. ``ref`` keeps such
pointers as information beside a citation.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

__all__ = ["citation_problem"]

_SOURCE_SUFFIXES = frozenset(
    {".py", ".go", ".ts", ".tsx", ".js", ".mjs", ".cjs", ".rs", ".java", ".rb", ".c", ".h"}
)
_SECTION = " § "


def citation_problem(citation: str) -> str | None:
    """Why ``citation`` is not a documentation citation, or None when it is one."""
    text = citation.strip()
    if not text:
        return "empty"
    target, _, section = text.partition(_SECTION)
    target = target.strip()
    if target.startswith("package:"):
        path = target.removeprefix("package:")
        if "/" not in path:
            return "expected package:<distribution>/<path of a doc file> § Section"
        if not section.strip():
            return "a package citation names its section: ' § Section title' after the path"
        return _source_file(path)
    if re.match(r"https?://", target):
        parts = urlsplit(target)
        if not parts.netloc:
            return "a URL without a host"
        if not parts.fragment and not section.strip():
            return "name the section: a #fragment or ' § Section title' after the URL"
        return _source_file(parts.path)
    return "expected an https:// URL with its section, or package:<distribution>/<doc file>"


def _source_file(path: str) -> str | None:
    if PurePosixPath(path).suffix.lower() in _SOURCE_SUFFIXES:
        return (
            f"{path} is source code, not documentation: a behaviour only the code shows is a "
            "finding, not a waiver"
        )
    return None
