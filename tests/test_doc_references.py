"""Every ``vaekit.x.y`` the source's docstrings and comments name exists: a module moved or renamed leaves no
reference behind that sends a reader to a module that is not there.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import vaekit

SOURCE = Path(vaekit.__file__).resolve().parent
DOTTED = re.compile(r"vaekit(?:\.[A-Za-z_]\w*)+")


def resolves(name: str) -> bool:
    """Whether ``name`` is a module, or an attribute path under the longest importable module it starts with."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_dotted_vaekit_name_in_the_source_exists() -> None:
    missing = [f"{path.relative_to(SOURCE)}:{n}: {name}"
               for path in sorted(SOURCE.rglob("*.py"))
               for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               for name in DOTTED.findall(line) if not resolves(name)]
    assert not missing, missing
