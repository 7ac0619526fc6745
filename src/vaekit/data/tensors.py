"""Images as the tensors the model reads: uint8 rows, and per batch float32 pixels in [0, 1].

Training, evaluation and the figures all hold a split as flattened uint8 rows (4x smaller than float32)
and convert a batch only when it is used; both conversions live here, beside the data they convert.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor


def to_unit(x_u8: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1] (done per batch so the data stays 4x smaller in memory)."""
    return x_u8.to(torch.float32).div_(255.0)


def as_rows(images: np.ndarray) -> torch.Tensor:
    """Images as a (N, pixels) uint8 tensor sharing their memory, a read-only memory map included.

    Training only ever reads these rows (batches are copies made by ``index_select``), so torch's warning
    that it could write to a read-only array does not apply.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(images.reshape(len(images), -1))
