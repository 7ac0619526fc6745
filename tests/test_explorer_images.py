"""The explorer takes the user's images: real image files fed to the page's file input in headless Chromium.

For MLP and conv runs, grey and colour: the page prepares each file exactly as ``vaekit.data.images``
decodes it, its encoder gives ``model.encode``'s posterior mean within 1e-4, the images appear on the plane
and in the list, and two clicks draw the interpolation strip whose ends decode the two means. Files the page
cannot use are named in one line. A hierarchical run's page encodes through ``vaekit explore --serve``'s
PyTorch endpoint, and from disk says in one line that it needs it. One page load per kind of run.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vaekit.artifacts.explorer import (
    ENCODE_PATH,
    MAX_ENCODE_BODY,
    encoder_layers,
    explorer_html,
    make_server,
    torch_decoder,
    torch_encoder,
)
from vaekit.data.images import decode_image
from vaekit.data.tensors import to_unit
from vaekit.model import VAE, model_config
from vaekit.model.conv import Residual

from .test_explorer_browser import Page, browser, open_page  # noqa: F401 - the shared Chromium fixtures

FAMILIES = [("mlp", (12, 10)), ("mlp", (8, 6, 3)), ("conv", (16, 16)), ("conv", (16, 16, 3)),
            ("conv+res", (16, 16, 3))]


def _model(preset: str, shape: tuple[int, ...]) -> VAE:
    """A random model with its weights scaled up, so the activations' non-linear ranges matter, different
    images land far apart and their means decode to different images. ``conv+res``: a residual block per level,
    whose second convolution is drawn too (a block starts as the identity)."""
    torch.manual_seed(len(shape))
    name, _, res = preset.partition("+")
    model = VAE(model_config(name, zdim=3, hidden=[24] if name == "mlp" else [8, 16], image_shape=shape,
                             res_blocks=1 if res else 0)).eval()
    with torch.no_grad():
        for block in (m for m in [*model.encoder, *model.decoder] if isinstance(m, Residual)):
            nn.init.normal_(block.body[-1].weight, std=0.05)
        for p in model.parameters():
            p.mul_(3.0)
    return model


def _page(model: VAE, path: Path) -> Path:
    rng = np.random.default_rng(0)
    path.write_text(explorer_html(model, rng.normal(size=(40, model.zdim)), rng.integers(0, 10, 40), title="t"))
    return path


def _image_files(folder: Path, shape: tuple[int, ...], n: int = 3) -> list[Path]:
    """``n`` PNG files of the run's size: noise, and smooth gradients with a bright square. A grey run also
    gets colour files, which the page must turn grey as vaekit does."""
    rng = np.random.default_rng(len(shape))
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        rgb = rng.integers(0, 256, (h, w, 3)) if i == 0 else np.stack(
            [(xx * 255 // max(w - 1, 1) + 60 * k * i) % 256 for k in range(3)], axis=-1)
        if i == 2:
            rgb[h // 4 : h // 2, w // 4 : w // 2] = 250
        grey = len(shape) == 2 and i == 1
        array = rgb[..., 0] if grey else rgb
        paths.append(folder / f"image {i}.png")
        Image.fromarray(array.astype(np.uint8), "L" if grey else "RGB").save(paths[-1])
    return paths


def _feed(page: Page, paths: list[Path]) -> None:
    page.page.set_input_files("#image-files", [str(p) for p in paths])
    page.page.evaluate("window.vaekit.idle()")


def _reference(model: VAE, paths: list[Path]) -> tuple[np.ndarray, torch.Tensor]:
    """The files as vaekit's data pipeline decodes them (uint8), and their posterior means in PyTorch."""
    channels = model.channels
    pixels = np.stack([decode_image(p, channels=channels) for p in paths])
    with torch.no_grad():
        mu, _ = model.encode(to_unit(torch.from_numpy(pixels.reshape(len(paths), -1))))
    return pixels, mu


def _strip_ends(page: Page, shape: tuple[int, ...], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and last images of the interpolation strip as drawn, (H, W, 3) in 0-255."""
    h, w = shape[:2]
    rgba = page.page.evaluate("Array.from(document.getElementById('interp').getContext('2d')"
                              f".getImageData(0, 0, {steps * w}, {h}).data)")
    strip = np.array(rgba, dtype=np.float64).reshape(h, steps * w, 4)[..., :3]
    return strip[:, :w], strip[:, -w:]


def _drawn(model: VAE, mu: torch.Tensor) -> np.ndarray:
    """How the page draws the decoded mean of ``mu``: (H, W, 3) in 0-255, grey repeated."""
    h, w = model.config.image_shape[:2]
    with torch.no_grad():
        img = model.mean_image(model.decode(mu[None]))[0].double().numpy().reshape(h, w, -1)
    return 255 * np.broadcast_to(img, (h, w, 3))


@pytest.mark.parametrize("preset,shape", FAMILIES)
def test_your_images_are_encoded_in_the_page_as_in_pytorch(open_page: Any, tmp_path: Path, preset: str,  # noqa: F811
                                                           shape: tuple[int, ...]) -> None:
    model = _model(preset, shape)
    page = open_page(_page(model, tmp_path / "page.html"))
    paths = _image_files(tmp_path, shape)
    _feed(page, paths)
    got = page.page.evaluate("window.vaekit.images()")
    pixels, mu = _reference(model, paths)
    assert [g["name"] for g in got] == [p.name for p in paths]
    assert page.page.locator("#image-list button img").count() == len(paths)
    np.testing.assert_array_equal(np.array([g["pixels"] for g in got]), pixels.reshape(len(paths), -1))
    means = torch.tensor([g["mean"] for g in got], dtype=torch.float64)
    assert float((means - mu.double()).abs().max()) <= 1e-4
    assert float(torch.cdist(mu, mu).max()) > 0.5  # different images, different points: not a comparison of constants

    steps = int(page.page.input_value("#interp-steps"))
    buttons = page.page.locator("#image-list button")
    buttons.nth(2).click()
    buttons.nth(0).click()
    assert page.page.inner_text("#interp-status").startswith(f"From {paths[2].name} to {paths[0].name}")
    page.page.evaluate("window.vaekit.idle()")
    first, last = _strip_ends(page, shape, steps)
    assert np.abs(first - _drawn(model, mu[2])).max() <= 1.01  # rounding to 8 bits, and the 1e-4 above
    assert np.abs(last - _drawn(model, mu[0])).max() <= 1.01
    assert np.abs(first - last).max() > 10
    assert page.errors == []


def test_files_the_page_cannot_use_are_one_line(open_page: Any, tmp_path: Path) -> None:  # noqa: F811
    """Not an image, a PNG cut short, an empty file: named in one line, the images before them kept, no error."""
    shape = FAMILIES[0][1]
    page = open_page(_page(_model("mlp", shape), tmp_path / "page.html"))
    good = _image_files(tmp_path, shape, n=1)
    _feed(page, good)
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "cut.png").write_bytes(good[0].read_bytes()[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    _feed(page, [tmp_path / "notes.txt", tmp_path / "cut.png", tmp_path / "empty.png"])
    status = page.page.locator("#images-status")
    text = status.inner_text()
    assert text.startswith("3 of 3 files not used: notes.txt: not an image") and text.endswith("(and 2 more)")
    assert "\n" not in text and "problem" in (status.get_attribute("class") or "")
    assert len(page.page.evaluate("window.vaekit.images()")) == 1
    assert page.page.locator("#image-list button").count() == 1
    with pytest.raises(Exception, match="x must be an array of 120 pixel values"):
        page.page.evaluate("window.vaekit.encode([0.5])")
    assert page.errors == []


def test_a_click_on_an_images_point_picks_its_mean_and_larger_images_are_resized(open_page: Any,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    """The plane: a click on one of your images' points takes its posterior mean as the first end of the
    interpolation. A larger image is centre-cropped and resized to the run's size, close to vaekit's bicubic."""
    shape = (16, 16)
    model = _model("conv", shape)
    page = open_page(_page(model, tmp_path / "page.html"))
    yy, xx = np.mgrid[0:32, 0:48]
    big = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    _feed(page, [tmp_path / "big.png"])
    got = page.page.evaluate("window.vaekit.images()")[0]
    want = decode_image(tmp_path / "big.png", channels=1, image_size=16).astype(np.float64)
    diff = np.abs(np.array(got["pixels"], dtype=np.float64).reshape(16, 16) - want)
    # the browser's smoothing, not Pillow's bicubic: 0.63 and 1 in Chromium 156
    assert diff.mean() <= 1.5 and diff.max() <= 4, (diff.mean(), diff.max())

    data_range = page.page.evaluate("JSON.parse(document.getElementById('vaekit-data').textContent).range")
    box = page.page.locator("#plane").bounding_box()
    fx, fy = ((np.array(got["mean"][:2]) * [1, -1] + data_range) / (2 * data_range) * 508 + [40, 12]) / 560
    page.page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    assert page.page.inner_text("#interp-status").startswith("A: big.png")
    assert page.page.evaluate("window.vaekit.getPoint()") == got["mean"]
    assert page.errors == []


def _hierarchy() -> VAE:
    torch.manual_seed(3)
    return VAE(model_config("hvae", zdim=2, hidden=[8, 8], image_shape=(8, 8))).eval()


def test_a_hierarchy_encodes_through_the_server_and_says_so_from_disk(open_page: Any, browser: Any,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    model = _hierarchy()
    path = _page(model, tmp_path / "page.html")
    page = open_page(path)  # from disk: the encoder is not in the page
    assert page.page.locator("#image-files").is_disabled()
    assert "--serve" in page.page.inner_text("#images-status")
    server = make_server(path.read_bytes(), 0, decoder=torch_decoder(model), encoder=torch_encoder(model))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served, errors = browser.new_page(), []
    served.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        served.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        files = _image_files(tmp_path, (8, 8))
        served.set_input_files("#image-files", [str(p) for p in files])
        served.evaluate("window.vaekit.idle()")
        status = served.inner_text("#images-status")
        got = torch.tensor([g["mean"] for g in served.evaluate("window.vaekit.images()")])
        decoded = torch.tensor(served.evaluate("z => window.vaekit.decode(z)", got[0].tolist()))
    finally:
        served.close()
        server.shutdown()
        server.server_close()
    _, mu = _reference(model, files)
    assert status.startswith("3 of your images") and errors == []
    torch.testing.assert_close(got, mu, atol=1e-6, rtol=0)
    with torch.no_grad():  # the served page's decoder requests pass its content policy too
        torch.testing.assert_close(decoded, model.mean_image(model.decode(mu[:1]))[0], atol=1e-5, rtol=0)


def _post(url: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_encode_endpoint_answers_one_line_of_json() -> None:
    model = _hierarchy()
    server = make_server(b"<p>page</p>", 0, encoder=torch_encoder(model))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        x = torch.rand(1, 64, generator=torch.Generator().manual_seed(0))
        status, mu = _post(base + ENCODE_PATH, json.dumps(x[0].tolist()).encode())
        bad = _post(base + ENCODE_PATH, b"[0.5, 2]")
        broken = _post(base + ENCODE_PATH, b"[0.5,")
        nowhere = _post(base + "/decode", b"[0, 0]")  # this server has no decoder
        req = urllib.request.Request(base + ENCODE_PATH, data=b"[]", method="POST",
                                     headers={"Content-Length": str(MAX_ENCODE_BODY + 1)})
        with pytest.raises(urllib.error.HTTPError) as too_big:
            urllib.request.urlopen(req, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    with torch.no_grad():
        want = model.encode(x)[0][0]
    assert status == 200
    torch.testing.assert_close(torch.tensor(mu), want, atol=1e-6, rtol=0)
    assert bad == (400, {"error": "expected a list of 64 pixel values in [0, 1] (one 8x8 image, channels last)"})
    assert broken[0] == 400 and "\n" not in broken[1]["error"]
    assert nowhere[0] == 404 and "/decode" in nowhere[1]["error"]
    assert too_big.value.code == 413


def test_the_page_gets_the_encoder_layers_and_one_buffer_for_both_networks() -> None:
    model = _model("conv", (16, 16, 3))
    layers, raw = encoder_layers(model)
    assert [la["type"] for la in layers] == ["to_image", "conv2d", "leaky_relu", "conv2d", "leaky_relu", "flatten",
                                             "linear"]
    assert layers[5]["shape"] == [16, 4, 4] and layers[-1]["out"] == 2 * model.zdim
    assert len(raw) == 4 * sum(p.numel() for p in model.encoder.parameters())
    text = explorer_html(model, np.zeros((2, 3)), np.array([0, 1]))
    start = text.index(">", text.index('id="vaekit-data"')) + 1
    data = json.loads(text[start : text.index("</script>", start)])
    assert [la["type"] for la in data["encoder"]] == [la["type"] for la in layers]
    assert len(data["weights"]) * 3 // 4 - data["weights"].count("=") == 4 * sum(p.numel() for p in model.parameters())
