"""A training step that cannot fit the machine's memory is refused in one line, before anything is allocated."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit.cli import main
from vaekit.model import model_config
from vaekit.training.memory import step_bytes

PROBE = """
import sys, torch
from vaekit.model import VAE, model_config

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

mcfg = model_config("conv", None, None, None, (48, 48, 3))
model = VAE(mcfg); opt = torch.optim.Adam(model.parameters())
x = torch.rand(32, mcfg.input_dim); eps = torch.randn(32, mcfg.zdim)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current size
base = status("VmRSS:")
for _ in range(2):
    logits, mu, logvar = model(x, eps)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, x) + mu.square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
print(status("VmHWM:") - base)
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak memory")
def test_the_estimate_is_near_what_a_real_step_takes() -> None:
    """The peak a real step adds to the process, measured from a reset peak in a fresh process."""
    measured = int(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout)
    estimate = step_bytes(model_config("conv", None, None, None, (48, 48, 3)), 32)
    assert 0.5 * measured < estimate < 1.5 * measured


def test_the_estimate_builds_nothing() -> None:
    """A conv model for 4096x4096 colour images at batch 128 needs terabytes; estimating it allocates none."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    need = step_bytes(model_config("conv", None, None, None, (4096, 4096, 3)), 128)
    assert need > 1e12
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def _folder(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_a_huge_image_size_is_refused_as_the_data_in_one_line(tmp_path: Path, hermetic_data: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = _folder(tmp_path / "d")
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--image-size", "4096", "--channels", "1", "--out", str(out),
                 "--quiet", "--device", "cpu"])
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert code == 2, line
    assert "4096x4096" in line and "--image-size" in line and "out of memory" not in line
    assert not out.exists(), "a refused run leaves no folder behind"
    assert not list(hermetic_data.rglob("*.npy")), "refused before decoding: nothing was cached"


def test_a_step_too_large_for_images_of_their_own_size_leaves_no_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --image-size the size is known once the folder is read; the refusal still leaves nothing."""
    import vaekit.data.memory as memory

    data = _folder(tmp_path / "d")
    monkeypatch.setattr(memory, "available_bytes", lambda: 5_000_000)
    out = tmp_path / "new" / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--quiet", "--device", "cpu"]) == 2
    assert "16x16 images" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_the_check_uses_the_memory_available(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import vaekit.data.memory as memory

    data = _folder(tmp_path / "d")
    args = ["train", "--data", str(data), "--image-size", "32", "--epochs", "1", "--quiet", "--device", "cpu",
            "--no-artifacts"]
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000_000)
    assert main([*args, "--out", str(tmp_path / "small")]) == 2
    assert "more than the 10.0 MB of cpu memory available" in capsys.readouterr().err
    monkeypatch.undo()
    assert main([*args, "--out", str(tmp_path / "fits")]) == 0
