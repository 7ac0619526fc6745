"""Images given to a trained model (a run's split or an array), batch by batch: the interface scoring reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vaekit.config import ConfigError
from vaekit.data.tensors import as_rows, to_unit

if TYPE_CHECKING:
    from vaekit.run import Run


@dataclass
class Batch:
    x: torch.Tensor
    pixels: np.ndarray
    names: list[str]
    labels: np.ndarray | None


class Inputs:
    def __init__(self, images: np.ndarray, prefix: str, labels: np.ndarray | None,
                 class_names: list[str] | None) -> None:
        self.images, self.prefix, self.labels, self.class_names = images, prefix, labels, class_names

    @property
    def n(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int = 256, device: str | torch.device = "cpu") -> Iterator[Batch]:
        for start in range(0, self.n, batch_size):
            pixels = np.ascontiguousarray(self.images[start : start + batch_size])
            labels = None if self.labels is None else np.asarray(self.labels[start : start + batch_size])
            yield Batch(to_unit(as_rows(pixels).to(device)), pixels,
                        [f"{self.prefix}:{i}" for i in range(start, start + len(pixels))], labels)


def open_inputs(run: Run, source: str | os.PathLike | np.ndarray | None = None, *, split: str | None = None,
                data_dir: str | os.PathLike | None = None, **_: Any) -> Inputs:
    if split is not None:
        from vaekit.eval.run import load_run_data

        splits = load_run_data(run, data_dir)
        images = splits.test_images if split == "test" else splits.train_images
        labels = splits.test_labels if split == "test" else splits.train_labels
        return Inputs(images, split, labels, list(splits.class_names) if splits.class_names else None)
    if isinstance(source, (str, os.PathLike)):
        with np.load(source, allow_pickle=False) as f:
            return Inputs(f["images"], "array", f.get("labels"), None)
    if source is None:
        raise ConfigError("no images given")
    return Inputs(np.asarray(source), "array", None, None)
