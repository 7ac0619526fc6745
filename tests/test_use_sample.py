"""``vaekit sample`` and ``Run.sample``: seeded draws, and the two-stage mixture fitted on training codes only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import run as runs
from vaekit.cli import main
from vaekit.data import write_idx
from vaekit.data.tensors import to_unit
from vaekit.eval.run import load_run_data
from vaekit.use.gmm import GMM_INFO, GMM_MAX_ITER, GMM_SEED, GMM_TENSORS, weights_sha256

from .artifact_runs import make_run
from .conftest import make_digits, write_dataset


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run (random weights, zdim 3) on 300 training and 100 test images of its own folder."""
    data = write_dataset(tmp_path / "data", 300, 100)
    return make_run(tmp_path / "run", data, zdim=3)


def _code(argv: list[str]) -> int:
    """The exit code of the command line, whether the parser or the command refuses."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def _stored(run_dir: Path) -> dict[str, np.ndarray]:
    tensors, _ = runs.read_tensors(run_dir / GMM_TENSORS)
    return {k: v.numpy() for k, v in tensors.items()}


def test_a_seed_draws_the_same_images_and_another_seed_others(run_dir: Path) -> None:
    run = runs.load_run(run_dir)
    for sampler in ("prior", "gmm"):
        a = run.sample(20, sampler=sampler, seed=1)
        assert a.shape == (20, 28, 28) and a.dtype == np.uint8
        assert np.array_equal(a, run.sample(20, sampler=sampler, seed=1))
        assert not np.array_equal(a, run.sample(20, sampler=sampler, seed=2))
    assert not np.array_equal(run.sample(20, seed=1), run.sample(20, sampler="gmm", seed=1))
    numpy_scalars = run.sample(np.int64(20), seed=np.int64(1), temperature=np.float32(1.0))  # e.g. from arithmetic
    assert np.array_equal(numpy_scalars, run.sample(20, seed=1, temperature=1.0))
    cold = run.sample(20, seed=1, temperature=0.0)  # temperature 0: every draw is the prior mean
    assert (cold == cold[0]).all()


def test_the_mixture_is_scikit_learns_fit_of_the_training_means_and_test_images_change_nothing(run_dir: Path) -> None:
    from sklearn.mixture import GaussianMixture

    run = runs.load_run(run_dir)
    run.sample(4, sampler="gmm", seed=0)
    stored = _stored(run_dir)
    train = load_run_data(run).train_images
    with torch.no_grad():
        means = run.model.encode(to_unit(torch.from_numpy(train.reshape(len(train), -1))))[0].double().numpy()
    ref = GaussianMixture(10, covariance_type="full", random_state=GMM_SEED, max_iter=GMM_MAX_ITER).fit(means)
    np.testing.assert_allclose(stored["means"], ref.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(stored["weights"], ref.weights_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(stored["covariances"], ref.covariances_, rtol=1e-6, atol=1e-8)
    info = json.loads((run_dir / GMM_INFO).read_text())
    assert info["n_train"] == len(train) == 300 and info["components"] == 10

    other, _ = make_digits(100, seed=99)  # other test images: the refitted mixture is the same
    write_idx(Path(run.train_config.data_dir) / "t10k-images-idx3-ubyte.gz", 255 - other)
    assert main(["sample", str(run_dir), "-n", "2", "--out", str(run_dir.parent / "s.png"), "--sampler", "gmm",
                 "--refit", "--seed", "0"]) == 0
    for key, value in _stored(run_dir).items():
        np.testing.assert_array_equal(value, stored[key])


def test_the_stored_mixture_is_reused_without_the_data_and_refitted_for_new_weights(run_dir: Path) -> None:
    run = runs.load_run(run_dir)
    first = run.sample(8, sampler="gmm", seed=5)
    before = json.loads((run_dir / GMM_INFO).read_text())
    data = Path(run.train_config.data_dir)
    data.rename(data.with_name("moved"))  # no training data: only the stored mixture can answer
    assert np.array_equal(run.sample(8, sampler="gmm", seed=5), first)
    data.with_name("moved").rename(data)
    with torch.no_grad():
        for p in run.model.parameters():
            p.mul_(1.01)
    runs.save_weights(run_dir, run.model)
    runs.load_run(run_dir).sample(8, sampler="gmm", seed=5)
    after = json.loads((run_dir / GMM_INFO).read_text())
    assert after["weights_sha256"] != before["weights_sha256"]
    assert after["weights_sha256"] == weights_sha256(runs.load_run(run_dir).model)


@pytest.mark.parametrize("damage", ["flip", "json", "truncate", "folder"])
def test_a_damaged_stored_mixture_is_refitted_after_one_warning(run_dir: Path, damage: str, capsys) -> None:
    out = run_dir.parent / "s.png"
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(out), "--sampler", "gmm", "--seed", "3"]) == 0
    good = np.asarray(Image.open(out))
    path = run_dir / GMM_TENSORS
    if damage == "flip":  # one byte of a mean: only the recorded hash can tell
        blob = bytearray(path.read_bytes())
        blob[-3] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif damage == "json":
        (run_dir / GMM_INFO).write_text("[1, 2]")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.unlink()
        path.mkdir()
    capsys.readouterr()
    code = main(["sample", str(run_dir), "-n", "4", "--out", str(out), "--sampler", "gmm", "--seed", "3", "--force"])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "sampler mixture" in line or "mixture was not" in line]
    assert len(warnings) == (2 if damage == "folder" else 1), err  # a folder in the way: it is not stored either
    assert "fitting it again" in warnings[0]
    assert code == 0 and np.array_equal(np.asarray(Image.open(out)), good)


def test_the_command_writes_a_folder_of_pngs_or_one_grid_and_never_overwrites(run_dir: Path, capsys) -> None:
    folder, grid = run_dir.parent / "samples", run_dir.parent / "grid.png"
    assert main(["sample", str(run_dir), "-n", "3", "--out", str(folder), "--seed", "0"]) == 0
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    assert np.asarray(Image.open(files[0])).shape == (28, 28)
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(grid), "--seed", "0"]) == 0
    assert np.asarray(Image.open(grid)).shape == (2 * 28, 2 * 28)
    capsys.readouterr()
    for argv in (["-n", "3", "--out", str(folder)], ["-n", "4", "--out", str(grid)],
                 ["-n", "4", "--out", str(grid), "--force", "--mode", "sample"],
                 ["-n", "4", "--out", str(grid), "--force", "--temperature", "-1"],
                 ["-n", "0", "--out", str(grid), "--force"]):
        assert _code(["sample", str(run_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert len([line for line in err.splitlines() if "error" in line]) == 1 and "Traceback" not in err, err
    assert main(["sample", str(run_dir), "-n", "3", "--out", str(folder), "--force", "--seed", "0"]) == 0
    jpeg = run_dir.parent / "grid.jpg"  # an image name that is not .png: refused, no folder of that name made
    assert main(["sample", str(run_dir), "-n", "2", "--out", str(jpeg)]) == 2
    assert "a folder is written here, not a .jpg file" in capsys.readouterr().err and not jpeg.exists()


def test_an_eight_bit_head_shows_its_mean_or_draws_its_pixels(tmp_path: Path) -> None:
    from vaekit.model import VAE, model_config

    run_dir = make_run(tmp_path / "run", write_dataset(tmp_path / "data", 50, 20), likelihood="discretized-logistic")
    mcfg = model_config("seed", zdim=2, head="discretized-logistic")
    _, tcfg, data = runs.read_config(run_dir)
    runs.write_config(run_dir, mcfg, tcfg, data)
    runs.save_weights(run_dir, VAE(mcfg))
    run = runs.load_run(run_dir)
    drawn = run.sample(6, seed=4, mode="sample")
    assert np.array_equal(drawn, run.sample(6, seed=4, mode="sample"))
    assert not np.array_equal(drawn, run.sample(6, seed=4, mode="mean"))


def test_a_hierarchy_draws_its_first_group_from_the_mixture_and_the_rest_from_their_priors(tmp_path: Path) -> None:
    run = runs.load_run(make_run(tmp_path / "run", write_dataset(tmp_path / "data", 60, 20), preset="hvae", zdim=4))
    a = run.sample(5, sampler="gmm", seed=1)
    assert a.shape == (5, 28, 28) and np.array_equal(a, run.sample(5, sampler="gmm", seed=1))
    info = json.loads((run.path / GMM_INFO).read_text())
    assert run.model.hierarchical and info["dim"] == run.model.zdim < run.model.latent_size
    assert not np.array_equal(a, run.sample(5, seed=1))


def test_force_replaces_the_images_of_an_earlier_call_and_keeps_the_users_files(run_dir: Path) -> None:
    """``-n 2 --force`` after ``-n 5``: the folder holds the two new images, not three stale ones beside them; a
    file of the user's in it stays; and a call that fails leaves the folder as it was."""
    folder = run_dir.parent / "replaced"
    assert main(["sample", str(run_dir), "-n", "5", "--out", str(folder), "--seed", "0"]) == 0
    (folder / "notes.txt").write_text("mine")
    (folder / "holiday.png").write_bytes(b"not ours")
    assert main(["sample", str(run_dir), "-n", "2", "--out", str(folder), "--seed", "1", "--force"]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["holiday.png", "notes.txt", "sample_00000.png", "sample_00001.png"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    import vaekit.use.outputs as outputs

    def broken(path: Path, image: np.ndarray) -> None:  # as atomic_write reports a full disk
        from vaekit.errors import WriteError

        raise WriteError(f"could not write {path}: No space left on device")

    mp = pytest.MonkeyPatch()
    mp.setattr(outputs, "write_png", broken)
    try:
        assert _code(["sample", str(run_dir), "-n", "4", "--out", str(folder), "--seed", "2", "--force"]) == 1
    finally:
        mp.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".replaced")] == []
