"""Text from the user's file system made safe to print and to encode: one line, valid UTF-8, still readable.

On Linux a file or folder name is bytes, and Python decodes the bytes that are not UTF-8 to lone
surrogates (U+DC80..U+DCFF, PEP 383). Such a string round-trips to the file system, but no font draws it
and no UTF-8 encoder writes it, so a class folder named with a Latin-1 byte would stop the figures, the
explorer and the report. Shown as ``\\xe9`` the byte stays recognizable, and the text encodes anywhere. A
name may also hold a newline or another control character, which would split a one-line message or move
the terminal's cursor: those are shown escaped too (``\\n``).
"""

from __future__ import annotations

import re
from typing import Any

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: Any) -> str:
    """``str(value)`` with each undecodable file-name byte as ``\\xNN``, each control character escaped
    (``\\n``, ``\\x1b``) and any other lone surrogate as ``\\uXXXX``."""
    shown = _ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", str(value))
    shown = _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), shown)
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")
