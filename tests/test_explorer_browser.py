"""The latent explorer in a real browser: parity with PyTorch, decode speed, the pointer, the controls.

Headless Chromium (Debian's ``chromium``) driven by Playwright loads the page from a file URL, as a user
opening ``RUN/explorer.html`` does, for MLP runs and convolutional colour runs. The browser tests skip only
when Chromium or Playwright is absent; ``tests/test_explorer_conv.py`` has the conv checks that need none.
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
from vaekit.data import Splits
from vaekit.model import VAE, model_config
from vaekit.model.conv import Residual, ToRows
from vaekit.run import save_weights

from .artifact_runs import Html, make_run
from .conftest import hermetic_env

# A function, not an expression: Playwright evaluates an expression with eval() at every poll, which the page's
# Content-Security-Policy (no 'unsafe-eval') refuses once a poll runs from the page's own frame callback, as it
# does whenever the page is still loading at the first check (a busy machine). A function is evaluated once.
VAEKIT_READY = "() => window.vaekit !== undefined"

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
        self.page.wait_for_function(VAEKIT_READY)

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


def test_colour_images_decode_and_draw_in_colour(open_page: Any, tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = VAE(model_config("mlp", zdim=2, hidden=[32], image_shape=(12, 10, 3))).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(2.5)
    page = open_page(_write_page(model, tmp_path / "page.html"))
    assert page.page.evaluate("window.vaekit.imageShape") == [12, 10, 3]
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(3)) * 2
    assert float((page.decode(z) - _reference(model, z)).abs().max()) <= 1e-4
    # the decoded image shows the pixels' own colours, channel for channel
    page.page.evaluate("window.vaekit.setPoint([0.5, -1])")
    rgba = page.page.evaluate("Array.from(document.getElementById('decoded').getContext('2d')"
                              ".getImageData(0, 0, 10, 12).data)")
    shown = torch.tensor(rgba, dtype=torch.float64).reshape(12, 10, 4)
    expected = 255 * _reference(model, torch.tensor([[0.5, -1.0]])).reshape(12, 10, 3).double()
    assert float((shown[..., :3] - expected).abs().max()) <= 1.0 and bool((shown[..., 3] == 255).all())
    assert float((shown[..., 0] - shown[..., 1]).abs().max()) > 10  # not grey
    assert page.canvas_size("grid") == (20 * 10, 20 * 12)
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
    with page.expect_navigation(url=(trained_run / EXPLORER).resolve().as_uri()):  # the run's own page, loaded
        page.click("a.explorer")
    page.wait_for_function(VAEKIT_READY)
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


# ---------------------------------------------------------------------------------------------- conv decoders

CONV_SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def conv_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the ``conv`` preset (zdim 32, default width) on 32x32 colour images, all artifacts written.

    Its decoder's weights are random and scaled up by 3, so that its logits spread over about +-4 and the
    decoded pixels vary from latent to latent: parity is then tested where the sigmoid is not flat.
    """
    out = make_run(tmp_path_factory.mktemp("conv") / "run", tiny_data, preset="conv", image_shape=CONV_SHAPE,
                   zdim=32)
    model = vaekit.load_model(out)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    save_weights(out, model)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (120, *CONV_SHAPE), dtype=np.uint8)
    splits = Splits("mine", images[:0], np.empty(0, np.int64), images, rng.integers(0, 4, 120), "memory",
                    class_names=("astronaut", "cat", "coffee", "rocket"))
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        write_artifacts(out, splits=splits)
    return out


def test_conv_colour_run_matches_pytorch_and_reports_decode_time(open_page: Any, conv_run: Path, capsys,
                                                            record_property) -> None:
    page = open_page(conv_run / EXPLORER)
    model = vaekit.load_model(conv_run)
    assert model.config.architecture == "conv" and model.zdim == 32
    assert page.page.evaluate("window.vaekit.imageShape") == list(CONV_SHAPE)
    assert page.page.evaluate("window.vaekit.zdim") == 32
    z = torch.randn(100, 32, generator=torch.Generator().manual_seed(0)) * 1.5
    got, want = page.decode(z), _reference(model, z)
    assert got.shape == (100, 32 * 32 * 3)
    assert float(want.std(0).mean()) > 0.1  # the pixels depend on the latent: a wrong layer shows
    diff = float((got - want).abs().max())
    assert diff <= 1e-4

    times = page.page.evaluate("""() => {
        const rand = () => Array.from({length: 32}, () => Math.random() * 4 - 2);
        for (let i = 0; i < 20; i++) window.vaekit.decode(rand());  // let the JIT compile it first
        const ts = [];
        for (let i = 0; i < 100; i++) {
            const z = rand(), t0 = performance.now();
            window.vaekit.decode(z);
            ts.push(performance.now() - t0);
        }
        return ts;
    }""")
    median = statistics.median(times)
    record_property("explorer_conv_decode_ms", median)
    with capsys.disabled():
        print(f"\nexplorer decode (conv preset, 32x32x3, zdim 32, headless Chromium): median {median:.2f} ms per "
              f"call over 100 calls (fastest {min(times):.2f} ms); max |page - PyTorch| {diff:.2e}")
    assert page.errors == []


def _pixels(page: Page, cid: str, x: int, y: int, w: int, h: int) -> torch.Tensor:
    """The RGB values (h, w, 3) of a canvas's rectangle, as float64."""
    rgba = page.page.evaluate("([id, x, y, w, h]) => Array.from(document.getElementById(id).getContext('2d')"
                              ".getImageData(x, y, w, h).data)", [cid, x, y, w, h])
    return torch.tensor(rgba, dtype=torch.float64).reshape(h, w, 4)[..., :3]


def test_conv_colour_run_drives_every_control(open_page: Any, conv_run: Path) -> None:
    page = open_page(conv_run / EXPLORER)
    p, model = page.page, vaekit.load_model(conv_run)
    h, w, _ = CONV_SHAPE
    p.evaluate("window.vaekit.idle()")  # the grid drawn on load, slice by slice
    assert page.canvas_size("grid") == (20 * w, 20 * h)
    # a cell of the grid: z1 and z2 at the grid's coordinates (span 2), the other dimensions as set (0)
    z = torch.zeros(1, 32)
    z[0, 0], z[0, 1] = -2 + 4 * 13 / 19, -2 + 4 * (19 - 5) / 19  # column 13, row 5 from the top
    cell = _pixels(page, "grid", 13 * w, 5 * h, w, h)
    assert float((cell - 255 * _reference(model, z).reshape(h, w, 3).double()).abs().max()) <= 1.0

    box = p.locator("#plane").bounding_box()
    p.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.3 * box["height"])
    first = page.image()
    p.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.75 * box["height"])
    assert page.image() != first
    at = page.point()
    shown = _pixels(page, "decoded", 0, 0, w, h)
    want = 255 * _reference(model, torch.tensor([at])).reshape(h, w, 3).double()
    assert float((shown - want).abs().max()) <= 1.0 and float((shown[..., 0] - shown[..., 2]).abs().max()) > 10

    p.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.5 * box["height"])
    p.mouse.click(box["x"] + 0.7 * box["width"], box["y"] + 0.5 * box["height"])
    p.click("#sample-btn")
    p.evaluate("window.vaekit.idle()")
    assert page.canvas_size("interp") == (10 * w, h) and page.canvas_size("samples") == (10 * w, h)
    assert float(_pixels(page, "samples", 9 * w, 0, w, h).std()) > 5  # the last sample was drawn too

    assert p.locator("#sliders input[type=range]").count() == 32 and p.locator("#dims").is_visible()
    before = page.image()
    p.evaluate("(() => { const s = document.getElementById('slider-30'); s.value = '2'; "
               "s.dispatchEvent(new Event('input')); })()")
    assert page.point()[30] == 2 and page.image() != before
    assert p.locator("#legend button").all_inner_texts() == ["astronaut", "cat", "coffee", "rocket"]
    assert page.errors == []


def test_a_newer_grid_replaces_one_still_being_drawn(open_page: Any, conv_run: Path) -> None:
    """A 40 x 40 grid takes many slices; asking for a 3 x 3 one meanwhile stops it, and only the new one shows."""
    page = open_page(conv_run / EXPLORER)
    p, model = page.page, vaekit.load_model(conv_run)
    p.evaluate("window.vaekit.idle()")
    # what the old grid's 1600 decodes would cost, measured here and now: a bound that holds however busy the machine
    full_grid = p.evaluate("""() => {
        const z = new Array(32).fill(0.5), t0 = performance.now();
        for (let i = 0; i < 40; i++) window.vaekit.decode(z);
        return (performance.now() - t0) / 1000 * 1600 / 40;
    }""")
    seconds = p.evaluate("""async () => {
        const t0 = performance.now();
        document.getElementById('grid-size').value = '40';
        document.getElementById('grid-btn').click();
        await new Promise((resolve) => setTimeout(resolve, 0));  // one slice of the large grid is drawn
        document.getElementById('grid-size').value = '3';
        document.getElementById('grid-btn').click();
        await window.vaekit.idle();
        return (performance.now() - t0) / 1000;
    }""")
    assert page.canvas_size("grid") == (3 * 32, 3 * 32)
    assert seconds < full_grid / 4, (seconds, full_grid)  # stopped after a slice, not drawn to the end first
    for row, col in [(0, 0), (2, 1)]:  # the cells of the new grid, not of the old one drawn on top
        z = torch.zeros(1, 32)
        z[0, 0], z[0, 1] = -2 + 2 * col, -2 + 2 * (2 - row)
        want = 255 * _reference(model, z).reshape(32, 32, 3).double()
        assert float((_pixels(page, "grid", 32 * col, 32 * row, 32, 32) - want).abs().max()) <= 1.0
    assert page.errors == []


def _odd_decoder() -> VAE:
    """A decoder of other kernels, strides, paddings and output paddings than the presets', for 17x8 colour.

    (8, 3, 4) -> ConvTranspose2d k4 s2 p1 -> (6, 6, 8) -> ConvTranspose2d k(5, 3) s(3, 2) p(2, 1) op(1, 0)
    -> (5, 17, 15) -> Conv2d k(3, 5) s(1, 2) p(1, 2), no bias -> (3, 17, 8) -> rows.
    """
    torch.manual_seed(7)
    model = VAE(model_config("mlp", zdim=5, hidden=[16], image_shape=(17, 8, 3))).eval()
    model.decoder = nn.Sequential(
        nn.Linear(5, 96), nn.Unflatten(-1, (8, 3, 4)), nn.ELU(),
        nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1), nn.Tanh(),
        nn.ConvTranspose2d(6, 5, (5, 3), stride=(3, 2), padding=(2, 1), output_padding=(1, 0)), nn.SiLU(),
        nn.Conv2d(5, 3, (3, 5), stride=(1, 2), padding=(1, 2), bias=False), ToRows()).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(4.0)
    return model


CONV_CASES = {"grey-28": ((28, 28), 1.0, "nearest", 0), "colour-20x28-narrow": ((20, 28, 3), 0.25, "nearest", 0),
              "colour-33x17-narrow": ((33, 17, 3), 0.25, "nearest", 0),
              "transposed-grey-28": ((28, 28), 1.0, "transposed", 0),
              "transposed-colour-33x17": ((33, 17, 3), 0.25, "transposed", 0),
              "residual-colour-20x28-narrow": ((20, 28, 3), 0.25, "nearest", 2)}


@pytest.mark.parametrize("case", [*CONV_CASES, "odd-kernels"])
def test_other_conv_decoders_match_pytorch(open_page: Any, tmp_path: Path, case: str) -> None:
    """The conv preset's decoders (nearest upsampling, and the transposed layout of runs stored before it) at
    even and odd sizes, and a decoder of kernels, strides and paddings no preset has."""
    if case == "odd-kernels":
        model = _odd_decoder()
    else:
        shape, width, upsample, res_blocks = CONV_CASES[case]
        torch.manual_seed(5)
        cfg = model_config("conv", zdim=8, image_shape=shape, width=width, res_blocks=res_blocks)
        cfg.upsample = upsample
        model = VAE(cfg).eval()
        with torch.no_grad():
            for block in (m for m in model.decoder if isinstance(m, Residual)):  # not the identity they start as
                nn.init.normal_(block.body[-1].weight, std=0.05)
                nn.init.normal_(block.body[-1].bias, std=0.05)
            for p in model.decoder.parameters():
                p.mul_(2.0 if res_blocks else 3.0)  # the blocks' sums grow faster: logits of about +-20 either way
    page = open_page(_write_page(model, tmp_path / "page.html"))
    z = torch.randn(40, model.zdim, generator=torch.Generator().manual_seed(6)) * 1.5
    want = _reference(model, z)
    assert float(want.std(0).mean()) > 0.05
    assert float((page.decode(z) - want).abs().max()) <= 1e-4
    assert page.errors == []


# ---------------------------------------------------------------------------------------------- no browser


def test_unsupported_decoder_layers_are_refused() -> None:
    model = _random_model("seed", 2)
    model.decoder[2] = nn.Softplus()
    with pytest.raises(ExplorerError, match="Softplus"):
        decoder_layers(model)
