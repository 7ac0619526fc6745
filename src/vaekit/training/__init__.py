"""Training: fit() and its step, the objective, schedules, checkpoints, callbacks, data parallelism.

``vaekit.train`` (:mod:`.session`) sets a run up (:mod:`.setup`, :mod:`.inputs`, :mod:`.modelchoice`), calls
:func:`.loop.fit` and writes the results (:mod:`.summary`); the loop's parts are the
step (:mod:`.step`: precision, compile, fused Adam, non-finite guard), the objective and its noise
(:mod:`.objective`), the schedules (:mod:`.schedule`), the checkpoint (:mod:`.checkpoint`) and the
callbacks (:mod:`.callbacks`: progress bar, checkpoints, metrics, log, TensorBoard; :mod:`.trackers`: MLflow
and Weights & Biases).
"""

from __future__ import annotations

from .callbacks import Callback
from .session import RESUMABLE, train

__all__ = ["RESUMABLE", "Callback", "train"]
