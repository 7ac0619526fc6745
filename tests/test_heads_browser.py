"""The explorer page of the 8-bit likelihood heads in Chromium: the image it shows is the head's mean,
computed from the decoder's parameters as :meth:`vaekit.model.VAE.mean_image` computes it (within 1e-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vaekit.artifacts.explorer import explorer_html
from vaekit.model import VAE, model_config

from .test_explorer_browser import browser, open_page  # noqa: F401 - the shared Chromium fixtures


def _model(preset: str, head: str, shape: tuple[int, ...], mixtures: int) -> VAE:
    """A random model whose output layer is scaled up, so the softmax, the coupling and the clamp all matter."""
    torch.manual_seed(len(shape) + mixtures)
    hidden = [24] if preset == "mlp" else [8, 16]
    model = VAE(model_config(preset, zdim=3, hidden=hidden, image_shape=shape, head=head,
                             mixtures=mixtures if head == "logistic-mixture" else 0)).eval()
    last = [m for m in model.decoder if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.mul_(40.0 if preset == "mlp" else 80.0)
    return model


@pytest.mark.parametrize("preset,head,shape", [
    ("mlp", "discretized-logistic", (12, 10)),
    ("mlp", "logistic-mixture", (12, 10)),
    ("mlp", "logistic-mixture", (8, 6, 3)),
    ("conv", "discretized-logistic", (16, 16, 3)),
    ("conv", "logistic-mixture", (16, 16, 3)),
])
def test_the_page_shows_the_heads_mean_as_pytorch_computes_it(open_page: Any, tmp_path: Path, preset: str,  # noqa: F811
                                                              head: str, shape: tuple[int, ...]) -> None:
    model = _model(preset, head, shape, mixtures=4)
    rng = np.random.default_rng(0)
    path = tmp_path / "page.html"
    path.write_text(explorer_html(model, rng.normal(size=(50, 3)), rng.integers(0, 10, 50), title="t"))
    page = open_page(path)
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        want = model.mean_image(model.decode(z))
    got = page.decode(z)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4
    assert float(want.std()) > 0.05  # the means vary: a comparison of constants would prove nothing
    assert page.errors == []
