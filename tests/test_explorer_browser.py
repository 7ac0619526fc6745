"""The latent explorer in a real browser: parity with PyTorch, decode speed, the pointer, the controls.

Headless Chromium (Debian's ``chromium``) driven by Playwright loads the page from a file URL, as a user
opening ``RUN/explorer.html`` does. The browser tests skip only when Chromium or Playwright is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import vaekit
from vaekit.artifacts import EXPLORER, FIGURES, REPORT, write_artifacts
from vaekit.artifacts.explorer import ExplorerError, decoder_layers, explorer_html
from vaekit.model import VAE, model_config

from .artifact_runs import Html, make_run
from .conftest import hermetic_env

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (python) is not installed")
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished seed-preset run with all its artifacts, as ``vaekit train`` leaves it.

    Its weights are random: different latent points decode differently all the same, and the page must
    compute what PyTorch computes for any weights.
    """
    out = make_run(tmp_path_factory.mktemp("explorer") / "run", tiny_data)
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        write_artifacts(out)
    return out


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """Opens explorer pages in the shared browser and closes them when the test ends."""
    pages: list[Page] = []

    def opener(path: Path) -> Page:
        pages.append(Page(browser, path))
        return pages[-1]

    yield opener
    for p in pages:
        p.page.close()


class Page:
    """A loaded explorer page and every console error or uncaught exception it produced."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 1000})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_function("window.vaekit !== undefined")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # one JSON string back instead of 100 x 784 numbers one by one: ten times faster through Playwright
        text = self.page.evaluate("zs => JSON.stringify(zs.map(z => window.vaekit.decode(z)))", z.tolist())
        return torch.tensor(json.loads(text))

    def image(self) -> str:
        return self.page.evaluate("document.getElementById('decoded').toDataURL()")

    def point(self) -> list[float]:
        return self.page.evaluate("window.vaekit.getPoint()")

    def canvas_size(self, cid: str) -> tuple[int, int]:
        return tuple(self.page.evaluate("id => [document.getElementById(id).width, "
                                        "document.getElementById(id).height]", cid))


def _reference(model: VAE, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(model.decode(z))


def test_page_parity_api_and_decode_speed(open_page: Any, trained_run: Path, capsys, record_property) -> None:
    page = open_page(trained_run / EXPLORER)  # the artifacts stage wrote it
    model = vaekit.load_model(trained_run)
    assert page.page.evaluate("window.vaekit.zdim") == 2
    assert page.page.evaluate("window.vaekit.imageShape") == [28, 28]
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(0)) * 2
    got = page.decode(z)
    assert got.shape == (100, 784)
    assert float((got - _reference(model, z)).abs().max()) <= 1e-4
    assert float(got.min()) >= 0 and float(got.max()) <= 1
    with pytest.raises(Exception, match="z must be an array of 2 numbers"):
        page.page.evaluate("window.vaekit.decode([1, 2, 3])")

    times = page.page.evaluate("""() => {
        const rand = () => [Math.random() * 6 - 3, Math.random() * 6 - 3];
        for (let i = 0; i < 50; i++) window.vaekit.decode(rand());  // let the JIT compile it first
        const ts = [];
        for (let i = 0; i < 200; i++) {
            const z = rand(), t0 = performance.now();
            window.vaekit.decode(z);
            ts.push(performance.now() - t0);
        }
        const t0 = performance.now();
        for (let i = 0; i < 200; i++) window.vaekit.decode(rand());
        return {each: ts, batch: (performance.now() - t0) / 200};
    }""")
    median = statistics.median(times["each"])
    record_property("explorer_decode_ms", median)
    with capsys.disabled():
        print(f"\nexplorer decode (seed preset, headless Chromium): median {median:.3f} ms per call over 200 calls, "
              f"mean {times['batch']:.3f} ms over 200 back-to-back calls")
    assert median <= 2.0
    assert page.errors == []


def test_pointer_clicks_keys_and_buttons_drive_the_page(open_page: Any, trained_run: Path, tmp_path: Path) -> None:
    page = open_page(trained_run / EXPLORER)
    p = page.page
    box = p.locator("#plane").bounding_box()
    assert box is not None

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    p.mouse.move(*at(0.2, 0.2))
    first, z1 = page.image(), page.point()
    p.mouse.move(*at(0.85, 0.8))
    second, z2 = page.image(), page.point()
    assert z1[0] < 0 < z1[1] and z2[0] > 0 > z2[1]  # upper left, then lower right of the plane
    assert first != second  # the decoded image followed the pointer

    p.mouse.click(*at(0.3, 0.5))
    assert "second point" in p.inner_text("#interp-status")
    p.mouse.click(*at(0.7, 0.5))
    assert page.canvas_size("interp") == (10 * 28, 28)

    before = page.point()
    p.keyboard.press("ArrowRight")
    p.keyboard.press("ArrowUp")
    after = page.point()
    assert after[0] > before[0] and after[1] > before[1]

    p.click("#sample-btn")
    assert page.canvas_size("samples") == (10 * 28, 28)
    assert page.canvas_size("grid") == (20 * 28, 20 * 28)  # drawn on load, as the post's figure
    p.fill("#grid-size", "6")
    p.click("#grid-btn")
    assert page.canvas_size("grid") == (6 * 28, 6 * 28)
    legend = p.locator("#legend button")
    assert legend.count() >= 2 and re.fullmatch(r"\d", legend.first.inner_text().strip())

    shot = tmp_path / "explorer.png"
    p.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.errors == []


ACTIVATIONS = ["elu", "relu", "tanh", "gelu", "silu", "leaky_relu"]


def _random_model(preset: str, zdim: int, activation: str | None = None, scale: float = 2.5) -> VAE:
    """A model with weights scaled up so the activations' non-linear ranges are exercised."""
    hidden = [48, 32] if preset == "mlp" else None
    torch.manual_seed(zdim)
    model = VAE(model_config(preset, zdim=zdim, hidden=hidden, activation=activation)).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(scale)
    return model


def _write_page(model: VAE, path: Path, n: int = 300) -> Path:
    rng = np.random.default_rng(0)
    path.write_text(explorer_html(model, rng.normal(size=(n, model.zdim)), rng.integers(0, 10, n), title="t"))
    return path


@pytest.mark.parametrize("activation", [*ACTIVATIONS, "gelu-tanh"])
def test_every_activation_and_latent_size_matches_pytorch(open_page: Any, tmp_path: Path, activation: str) -> None:
    zdim = {"elu": 1, "relu": 3, "tanh": 5}.get(activation, 2)
    model = _random_model("mlp", zdim, "gelu" if activation == "gelu-tanh" else activation)
    if activation == "gelu-tanh":
        model.decoder[1] = nn.GELU(approximate="tanh")
    page = open_page(_write_page(model, tmp_path / "page.html"))
    z = torch.randn(100, zdim, generator=torch.Generator().manual_seed(1)) * 2.5
    assert float((page.decode(z) - _reference(model, z)).abs().max()) <= 1e-4
    assert page.page.locator("#sliders input[type=range]").count() == zdim
    assert page.errors == []


def test_sliders_and_plane_dimensions_for_zdim_above_two(open_page: Any, tmp_path: Path) -> None:
    model = _random_model("mlp", 4, "elu")
    page = open_page(_write_page(model, tmp_path / "page.html"))
    p = page.page
    assert p.locator("#dims").is_visible()
    before = page.image()
    p.evaluate("(() => { const s = document.getElementById('slider-3'); s.value = '1.5'; "
               "s.dispatchEvent(new Event('input')); })()")
    assert page.point() == [0, 0, 0, 1.5]
    assert page.image() != before
    p.select_option("#dim-x", "2")
    box = p.locator("#plane").bounding_box()
    p.mouse.move(box["x"] + 0.9 * box["width"], box["y"] + 0.5 * box["height"])
    z = page.point()
    assert z[2] > 1 and z[0] == 0 and z[3] == 1.5  # the pointer now moves z3, and z4 keeps its slider value
    assert page.errors == []


def test_seed_preset_without_training_matches_pytorch(open_page: Any, tmp_path: Path) -> None:
    model = _random_model("seed", 2)
    assert [type(m) for m in model.decoder[:2]] == [nn.Linear, nn.Linear]  # the post's missing activation
    page = open_page(_write_page(model, tmp_path / "page.html"))
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(2)) * 3
    assert float((page.decode(z) - _reference(model, z)).abs().max()) <= 1e-4
    assert page.errors == []


def test_report_links_to_the_explorer(browser: Any, trained_run: Path) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((trained_run / REPORT).resolve().as_uri())
    assert page.locator("img").count() == len(FIGURES)
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 100)")  # PNGs decode
    page.click("a.explorer")
    page.wait_for_function("window.vaekit !== undefined")
    assert page.evaluate("window.vaekit.zdim") == 2
    page.close()
    assert errors == []


def test_page_title_cannot_break_out_of_its_script(open_page: Any, tmp_path: Path) -> None:
    """A run named like markup is shown as text: the page's own two scripts run, and nothing else does."""
    model = _random_model("seed", 2)
    title = "</script><script>window.injected = 1</script><b>x"
    path = tmp_path / "page.html"
    path.write_text(explorer_html(model, np.zeros((3, 2)), np.array([0, 1, 2]), title=title))
    doc = Html(path.read_text())
    assert len(doc.find("script")) == 2 and not doc.find("b")  # the data block and the program, no more
    links = [a.get("src") or a.get("href") or "" for _, a in doc.elements]
    assert not [link for link in links if "://" in link or link.startswith("//")]  # nothing from the network
    page = open_page(path)
    assert page.page.evaluate("window.injected === undefined")
    assert page.page.title() == f"vaekit latent explorer: {title}"
    assert page.errors == []


# ---------------------------------------------------------------------------------------------- no browser


def test_unsupported_decoder_layers_are_refused() -> None:
    model = _random_model("seed", 2)
    model.decoder[2] = nn.Softplus()
    with pytest.raises(ExplorerError, match="Softplus"):
        decoder_layers(model)
