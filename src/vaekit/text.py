"""Text from a run folder made safe to draw and to encode: names that are not valid UTF-8 shown readably.

On Linux a file or folder name is bytes, and Python decodes the bytes that are not UTF-8 to lone
surrogates (U+DC80..U+DCFF, PEP 383). Such a string round-trips to the file system, but no font draws it
and no UTF-8 encoder writes it, so a class folder named with a Latin-1 byte would stop the figures, the
explorer and the report. Shown as ``\\xe9`` the byte stays recognizable, and the text encodes anywhere.
"""

from __future__ import annotations

import re
from typing import Any

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def printable(value: Any) -> str:
    """``str(value)`` with each undecodable file-name byte as ``\\xNN`` and any other lone surrogate as ``\\uXXXX``."""
    shown = _ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", str(value))
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")
