"""How much memory a model's layers take: the bytes of every layer's output while the model runs.

One measurement for the two places that size work by a model's activations: the chunks of the importance-sampled
log-likelihood (one decoded row) and the refusal of a training step that cannot fit (one batch, on the ``meta``
device, where shapes are computed and nothing is allocated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

__all__ = ["leaf_output_bytes"]


def leaf_output_bytes(module: nn.Module, run: Callable[[], Any], skip_views: bool = False) -> tuple[int, Any]:
    """(bytes of the outputs of every leaf layer of ``module`` while ``run()`` executes, what ``run`` returned).

    With ``skip_views`` an output that shares storage with one of its layer's inputs (a reshape) counts nothing;
    leave it off on the ``meta`` device, where no tensor has storage to compare.
    """
    sizes: list[int] = []

    def count(_module: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        if not isinstance(out, Tensor):
            return
        if skip_views:
            ptr = out.untyped_storage().data_ptr()
            if any(isinstance(t, Tensor) and t.untyped_storage().data_ptr() == ptr for t in inputs):
                return
        sizes.append(out.numel() * out.element_size())

    hooks = [m.register_forward_hook(count) for m in module.modules() if not any(m.children())]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes), result
