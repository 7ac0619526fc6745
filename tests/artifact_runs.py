"""Finished run folders assembled from their parts, without training: what the artifacts stage reads.

The artifacts of a run depend on its folder alone (config, weights, metrics, summary and the data it
names), so their tests build that folder directly: quick, and independent of the training loop.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import torch

from vaekit import run as runs
from vaekit.config import TrainConfig
from vaekit.model import VAE, model_config


def make_run(folder: Path, data_dir: Path, *, epochs: int = 2, seed: int = 0, likelihood: str = "bernoulli",
             sigma: float = 1.0, learn_sigma: bool = False, zdim: int = 2, preset: str = "seed",
             image_shape: tuple[int, ...] = (28, 28), hidden: list[int] | None = None, head: str = "logits",
             mixtures: int = 0, context: int = 0, **train: Any) -> Path:
    """A finished run with random weights in ``folder``, on the IDX data in ``data_dir`` (the seed preset's);
    ``head`` and ``mixtures`` are the model's (an 8-bit head goes with the likelihood of its name)."""
    torch.manual_seed(seed)
    mcfg = model_config(preset, zdim=zdim, learn_sigma=learn_sigma, sigma_init=sigma, image_shape=image_shape,
                        hidden=hidden, head=head, mixtures=mixtures, context=context)
    model = VAE(mcfg)
    if likelihood == "discretized-logistic":  # its scales are a weight of the model, not a training setting
        sigma, learn_sigma = 1.0, False
    tcfg = TrainConfig(dataset="mnist", data_dir=str(data_dir), epochs=epochs, device="cpu", likelihood=likelihood,
                       sigma=sigma, learn_sigma=learn_sigma, progress=False, model=preset, hidden=hidden,
                       mixtures=mixtures or None, context=context, **train)
    tcfg.validate()
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_config(folder, mcfg, tcfg, {"dataset": "mnist", "source": str(data_dir), "n_train": 600,
                                           "n_test": 200, "image_shape": list(image_shape)})
    runs.save_weights(folder, model)
    rows = [{"epoch": e, "train_loss": 220.0 - 7.5 * e, "test_loss": 215.0 - 6.25 * e, "test_recon": 200.0 - 6.5 * e,
             "test_kl": 15.0 + 0.25 * e, "seconds": 1.5, "lr": tcfg.lr} for e in range(1, epochs + 1)]
    runs.write_metrics(folder / runs.METRICS, rows)
    last = rows[-1]
    runs.write_json(folder / runs.SUMMARY, {
        "test_loss": last["test_loss"], "test_recon": last["test_recon"], "test_kl": last["test_kl"],
        "train_loss": last["train_loss"], "epochs": epochs, "dataset": "mnist", "data_source": str(data_dir),
        "likelihood": likelihood, "model": preset, "zdim": zdim, "n_params": sum(p.numel() for p in model.parameters()),
        "device": "cpu",
    })
    return folder


class Html(HTMLParser):
    """A page read as a browser reads it: its elements, its text, and its tables, by ``<h2>`` section.

    ``sections[name]`` holds the text under the heading ``name`` (up to the next ``<h2>``); ``tables[name]``
    the rows (lists of cell texts) of the tables there; ``elements`` every start tag with its attributes,
    and ``section_of`` the section of each. Text before the first ``<h2>`` is the section ``""``.
    """

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.section_of: list[str] = []
        self.sections: dict[str, str] = {"": ""}
        self.tables: dict[str, list[list[list[str]]]] = {"": []}
        self.title = ""
        self._open: list[str] = []
        self._section = ""
        self._heading: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self.section_of.append(self._section)
        if tag == "h2":
            self._heading = ""
        elif tag == "table":
            self.tables[self._section].append([])
        elif tag == "tr" and self.tables[self._section]:
            self.tables[self._section][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in ("meta", "link", "img", "br", "input", "hr", "line", "circle", "rect", "polyline"):
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._heading is not None:
            self._section, self._heading = self._heading.strip(), None
            self.sections[self._section] = ""
            self.tables[self._section] = []
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._section][-1][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1] == "title":
            self.title += data
        if self._heading is not None:
            self._heading += data
            return
        if self._cell is not None:
            self._cell.append(data)
        if not (self._open and self._open[-1] in ("style", "script", "title")):
            self.sections[self._section] += data

    def find(self, tag: str, section: str | None = None) -> list[dict[str, str]]:
        """The attributes of every ``tag`` element (in ``section`` only, if given)."""
        return [a for (t, a), s in zip(self.elements, self.section_of, strict=True)
                if t == tag and (section is None or s == section)]

    def text(self, section: str) -> str:
        """The text of a section with its white space collapsed."""
        return " ".join(self.sections[section].split())

    def pairs(self, section: str) -> dict[str, str]:
        """The two-column (name, value) rows of every table in a section."""
        return {row[0]: row[1] for table in self.tables[section] for row in table if len(row) == 2}
