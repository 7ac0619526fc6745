"""Shared fixtures: a hermetic data environment and small generated IDX datasets; Hypothesis profiles; tiers.

Hypothesis runs under the profile named by ``HYPOTHESIS_PROFILE`` (default ``ci``):

* ``ci``: the same examples on every run (derandomized, so CI is reproducible and a failure reruns exactly),
  no deadline (a shared 2-core runner is noisy), and ``max_examples`` sized so the whole suite stays within
  its three minutes;
* ``dev``: random examples, a few, for quick edits;
* ``soak``: random examples, many, for hunting bugs by hand (``HYPOTHESIS_PROFILE=soak pytest tests/test_...``).

A test that needs more (or fewer) examples than the profile gives says so with ``@settings(max_examples=...)``;
everything else it inherits from the profile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# One compute thread per process (unless the environment says otherwise), set before torch is imported and
# inherited by the subprocesses tests start. The models here are tiny: a second thread gains nothing, and on a
# busy 2-core machine the threads of one step wait for each other, which made training 2-6x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Temporary folders in memory where the machine has a RAM file system: a run folder is written with an fsync
# per file (crash safety), milliseconds each on a disk and a quarter of the training tests' time. pytest reads
# this variable when it makes its first temporary folder, after this file is imported.
if "PYTEST_DEBUG_TEMPROOT" not in os.environ and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    os.environ["PYTEST_DEBUG_TEMPROOT"] = "/dev/shm"

# Fixtures shared by the examples of a test (module or session scope, or a scratch folder rewritten by
# every example) are safe here, and a slow example on a busy machine is not a failure.
_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=250, suppress_health_check=_QUIET,
                          print_blob=True)
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("soak", max_examples=5000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever drives a real browser is in the slow tier."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _isolate(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """Point the cache at ``cache``, search no local copies and never download."""
    mp.setenv("VAEKIT_DATA", str(cache))
    mp.setenv("VAEKIT_SEARCH_PATH", "")
    mp.setenv("VAEKIT_OFFLINE", "1")


@pytest.fixture(autouse=True)
def hermetic_data(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the user's cache, the machine's dataset copies or the network unless it asks to."""
    cache = tmp_path_factory.mktemp("cache")
    _isolate(monkeypatch, cache)
    return cache


@contextlib.contextmanager
def hermetic_env(cache: Path) -> Iterator[None]:
    """The environment of ``hermetic_data`` for fixtures wider than one test (module or session scope)."""
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, cache)
        yield


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 28x28 uint8 images of 10 classes (a bar at a label-dependent angle) with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    yy, xx = np.mgrid[-13.5:14.5, -13.5:14.5]
    imgs = np.empty((n, 28, 28), dtype=np.uint8)
    for i, lab in enumerate(labels):
        angle = np.pi * lab / 10 + rng.normal(0, 0.05)
        dist = np.abs(np.cos(angle) * yy - np.sin(angle) * xx)
        img = np.clip(1.5 - dist / 1.5, 0, 1) * (np.hypot(xx, yy) < 11)
        imgs[i] = np.clip(img * 255 + rng.normal(0, 10, (28, 28)), 0, 255).astype(np.uint8)
    return imgs, labels


def write_dataset(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write the four MNIST-named IDX files of a generated dataset into ``folder``."""
    from vaekit.data import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = make_digits(n_train, seed)
    te_x, te_y = make_digits(n_test, seed + 1)
    write_idx(folder / "train-images-idx3-ubyte.gz", tr_x)
    write_idx(folder / "train-labels-idx1-ubyte.gz", tr_y)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", te_x)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", te_y)
    return folder


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every image the folder reader decodes (the real decoder still runs)."""
    import vaekit.data.folder as folder_module
    from vaekit.data.images import decode_image

    seen: list[str] = []

    def counting(source, **options):
        seen.append(str(source))
        return decode_image(source, **options)

    monkeypatch.setattr(folder_module, "decode_image", counting)
    return seen


@pytest.fixture
def float64():
    """Double precision as the default dtype for one test (reference computations); restored afterwards."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 training and 200 test images in MNIST's file layout."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", 600, 200)


# Examples per fuzz test of the image and array readers; VAEKIT_FUZZ_SCALE multiplies them (0.1 for a quick run,
# 10 for a long one). Their counts are set per test so that together they try at least 2,000 inputs.
FUZZ_SCALE = float(os.environ.get("VAEKIT_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """Hypothesis settings for ``examples`` (times the scale) reproducible examples, without a deadline."""
    return settings(
        max_examples=max(1, int(examples * FUZZ_SCALE)),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in vaekit handles it."""


def kill_at_save_point(epoch: int, step: int) -> object:
    """A callback that dies right after the mid-epoch save point at ``epoch`` (completed) + ``step`` steps,
    once the checkpoint callback (which runs before it) has written the checkpoint."""
    import vaekit

    class KillAtSavePoint(vaekit.Callback):
        def on_save_point(self, trainer, state) -> None:
            if (state.epoch, state.step_in_epoch) == (epoch, step):
                raise Killed

    return KillAtSavePoint()


@contextlib.contextmanager
def http_server(root: Path, handler: type) -> Iterator[tuple[str, list[str]]]:
    """A real threaded HTTP server on 127.0.0.1 serving ``root`` with ``handler`` (a SimpleHTTPRequestHandler
    that appends each path to ``self.server.requests_seen``); yields (base URL, requests seen)."""
    import functools
    import http.server
    import threading

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    httpd.daemon_threads = True
    httpd.requests_seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests_seen  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def peak_allocations(code: str, *args: str) -> int:
    """The peak of Python and NumPy allocations (tracemalloc) while ``code`` runs, in a Python process of its own
    (``args`` as its ``sys.argv[1:]``). tracemalloc counts every thread's allocations, and threads that other tests
    leave in the test process (a tracker's, a server's) would count too. ``code`` runs after vaekit is imported."""
    import subprocess
    import sys

    program = ("import sys, tracemalloc\nimport vaekit\ntracemalloc.start()\n" + code +
               "\nprint(tracemalloc.get_traced_memory()[1])\n")
    done = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])
