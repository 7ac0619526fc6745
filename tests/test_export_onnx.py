"""``vaekit export RUN --onnx DIR``: ONNX Runtime runs the exported encoder and decoder as PyTorch does.

Each test reads the files back with ONNX Runtime itself and compares them with the run's own model
(``encode``, ``decode``, ``mean_image``), at batch sizes the export never saw, so the export's own check is
not what is tested. The models' output layers are scaled up (as a trained model's are) so the heads'
softmax, coupling and clamp all matter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vaekit import run as runs
from vaekit.cli import main
from vaekit.use import onnx as onnx_export

from .artifact_runs import make_run

ort = pytest.importorskip("onnxruntime")

BATCHES = (1, 7)


def _run(folder: Path, preset: str, shape: tuple[int, ...], head: str = "logits", mixtures: int = 0) -> Path:
    """A run folder with random weights whose decoder's last layer is scaled up."""
    hidden = {"mlp": [16], "conv": [4, 8], "hvae": [8, 8]}[preset]
    likelihood = head if head != "logits" else "bernoulli"
    make_run(folder, folder.parent / "data", preset=preset, zdim=3, image_shape=shape, hidden=hidden, head=head,
             mixtures=mixtures, likelihood=likelihood)
    model = runs.load_model(folder)
    last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.mul_(30.0)
    runs.save_weights(folder, model)
    return folder


def _assert_matches_pytorch(run_dir: Path, out: Path) -> None:
    """encoder.onnx and decoder.onnx against the run's model, on images and latents of their own."""
    model = runs.load_model(run_dir)
    encoder = ort.InferenceSession(str(out / onnx_export.ENCODER_FILE), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out / onnx_export.DECODER_FILE), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for n in BATCHES:
        x = (rng.integers(0, 256, (n, model.config.input_dim)) / 255).astype(np.float32)
        z = rng.normal(0, 2, (n, model.zdim)).astype(np.float32)
        mu, logvar = encoder.run(["mu", "logvar"], {"x": x})
        params, image = decoder.run(None, {"z": z})
        with torch.no_grad():
            ref_mu, ref_logvar = model.encode(torch.from_numpy(x))
            ref_params = model.decode(torch.from_numpy(z))
            ref_image = model.mean_image(ref_params)
        for got, ref in ((mu, ref_mu), (logvar, ref_logvar), (params, ref_params), (image, ref_image)):
            assert got.shape == tuple(ref.shape)
            np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-4)
        assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.05  # the head's image, not a constant


def test_the_command_exports_an_mlp_run_that_onnx_runtime_runs_as_pytorch(tmp_path: Path, capsys) -> None:
    run_dir = _run(tmp_path / "run", "mlp", (12, 10))
    out = tmp_path / "exports" / "mlp"
    assert main(["export", str(run_dir), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max difference" in printed and "opset" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "decoder.onnx", "encoder.onnx", "onnx.json"]
    _assert_matches_pytorch(run_dir, out)
    info = json.loads((out / "onnx.json").read_text())
    assert info["check"]["max_abs_diff"] <= 1e-4
    assert f"{info['check']['max_abs_diff']:.2g}" in printed
    assert info["input"]["height"] == 12 and info["input"]["width"] == 10 and info["input"]["channels"] == 1
    assert [t["name"] for t in info["decoder"]["outputs"]] == ["logits", "image"]
    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # the batch axis is dynamic, not the example's size
    assert info["opset"] == max(o.version for o in __import__("onnx").load(str(out / "encoder.onnx")).opset_import
                                if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("preset,shape,head,mixtures", [
    ("mlp", (8, 6, 3), "logistic-mixture", 3),
    ("conv", (12, 12), "discretized-logistic", 0),
    ("conv", (16, 16, 3), "logits", 0),
    ("hvae", (8, 8), "logits", 0),
])
def test_conv_colour_eight_bit_heads_and_the_hierarchy_export_and_match(tmp_path: Path, preset: str,
                                                                         shape: tuple[int, ...], head: str,
                                                                         mixtures: int) -> None:
    run_dir = _run(tmp_path / "run", preset, shape, head, mixtures)
    info = onnx_export.export_onnx(runs.load_run(run_dir), tmp_path / "onnx")
    _assert_matches_pytorch(run_dir, tmp_path / "onnx")
    assert info["check"]["max_abs_diff"] <= 1e-4
    names = {"logits": "logits"}.get(head, "params")
    params, image = info["decoder"]["outputs"]
    assert (params["name"], image["name"]) == (names, "image")
    assert params["shape"] == ["batch", np.prod(shape[:2]) * info["head"]["params_per_pixel"]]
    assert image["shape"] == ["batch", np.prod(shape)]


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    return _run(tmp_path / "run", "mlp", (6, 5))


def test_an_existing_folder_is_refused_without_force_and_force_keeps_other_files(tiny_run: Path, tmp_path: Path,
                                                                                 capsys) -> None:
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "encoder.onnx").write_bytes(b"an older export")
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force" in err
    assert (out / "encoder.onnx").read_bytes() == b"an older export" and not (out / "decoder.onnx").exists()
    assert main(["export", str(tiny_run), "--onnx", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    _assert_matches_pytorch(tiny_run, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx", "run"]  # no temporary folder left


def test_an_export_that_differs_from_pytorch_is_refused_and_leaves_nothing(tiny_run: Path, tmp_path: Path,
                                                                            monkeypatch, capsys) -> None:
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # no difference passes: the refusal path, for real files
    out = tmp_path / "new" / "onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "differs from PyTorch" in err and "nothing was kept" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nor the folders made on the way


def test_a_run_with_a_causal_context_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    make_run(run, tmp_path / "data", preset="conv", zdim=3, image_shape=(8, 8, 3), hidden=[4, 8],
             head="logistic-mixture", mixtures=2, likelihood="logistic-mixture", context=1)
    assert main(["export", str(run), "--onnx", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--context 1" in err and "--context 0" in err
    assert not (tmp_path / "onnx").exists()


def test_an_opset_the_exporter_cannot_write_is_one_line(tiny_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "onnx"), "--opset", "5"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "opset 5" in err
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("package", onnx_export.ONNX_PACKAGES)
def test_without_the_onnx_extra_the_command_names_it(tiny_run: Path, tmp_path: Path, monkeypatch, capsys,
                                                     package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what importing a package that is not installed does
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and package in err and "vaekit[onnx]" in err
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("damage", ["missing", "config", "weights"])
def test_a_broken_run_folder_is_one_line(tiny_run: Path, tmp_path: Path, capsys, damage: str) -> None:
    run_dir = tmp_path / "absent" if damage == "missing" else tiny_run
    if damage == "config":
        (tiny_run / runs.CONFIG).write_text("{not json")
    elif damage == "weights":
        (tiny_run / runs.WEIGHTS).write_bytes(b"\x00" * 40)
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(run_dir) in err
    assert not (tmp_path / "onnx").exists()


def test_help_and_a_missing_onnx_flag(tiny_run: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0 and "--opset" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["export", str(tiny_run)])
    assert e.value.code == 2 and "--onnx" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["run folder", "file"])
def test_the_run_folder_itself_or_a_file_is_no_destination(tiny_run: Path, tmp_path: Path, capsys, where: str) -> None:
    out = tiny_run if where == "run folder" else tmp_path / "file.onnx"
    if where == "file":
        out.write_bytes(b"mine")
    before = sorted(p.name for p in tiny_run.iterdir())
    assert main(["export", str(tiny_run), "--onnx", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and where in err
    assert sorted(p.name for p in tiny_run.iterdir()) == before
