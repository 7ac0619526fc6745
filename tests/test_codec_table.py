"""benchmarks/codec_table.py: its codec bits/dim are 8 x file bytes / pixel values, and the script runs end to end."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "codec_table.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def codec_table():
    spec = importlib.util.spec_from_file_location("codec_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["codec_table"] = module
    spec.loader.exec_module(module)
    return module


def _png_bytes(image: np.ndarray) -> int:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True, compress_level=9)
    return len(buf.getvalue())


def test_codec_bits_per_dim_is_8_times_bytes_over_pixel_values(codec_table) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images[1] = 7  # a flat image compresses to far below a bit per value
    per_image = sum(_png_bytes(img) for img in images) * 8 / images.size
    assert codec_table.codec_bits_per_dim(images, "png") == pytest.approx(per_image, abs=0)
    stacked = _png_bytes(images[:2].reshape(64, 32, 3)) + _png_bytes(images[2])
    assert codec_table.codec_bits_per_dim(images, "png", strip=2) == pytest.approx(stacked * 8 / images.size, abs=0)
    assert codec_table.codec_bits_per_dim(images[1:2], "png") < 0.5  # mostly the file's header
    assert codec_table.codec_bits_per_dim(images[:1], "png") > 8  # noise does not compress: PNG adds its overhead
    grey = rng.integers(0, 4, (2, 28, 28), dtype=np.uint8)  # 2 bits of entropy per pixel
    assert 1.5 < codec_table.codec_bits_per_dim(grey, "webp") < 4


def test_rows_are_preset_likelihood_and_settings(codec_table) -> None:
    assert codec_table.parse_row("mlp:discretized-logistic:zdim=32:lr=0.002") == {
        "model": "mlp", "likelihood": "discretized-logistic", "zdim": 32, "lr": 0.002}
    with pytest.raises(Exception, match="preset:likelihood"):
        codec_table.parse_row("conv")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_table_runs_end_to_end_tiny(codec_table, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skimage")
    assert codec_table.main(["--tiny", "--quiet", "--data", "fashion,crops", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table.md").read_text()
    assert (tmp_path / "results.json").exists()
    assert table in capsys.readouterr().out
    for what in ("PNG per image", "WebP lossless strips of 8", "vaekit conv:logistic-mixture:context=0",
                 "vaekit conv:logistic-mixture ", "photo crops", "VDVAE"):
        assert what in table
    assert sorted(p.name for p in (tmp_path / "data" / "crops-tiny").iterdir()) == ["done", "test", "train"]
