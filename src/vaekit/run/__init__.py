"""The run folder: file names and the :class:`Run` (:mod:`.folder`), atomic and bounded I/O (:mod:`.io`),
and the lock that keeps a second writer out (:mod:`.lock`)."""

from __future__ import annotations

from .folder import (
    BEST_WEIGHTS,
    CHECKPOINT,
    CONFIG,
    FORMAT_VERSION,
    METRIC_COLUMNS,
    METRICS,
    REQUIRED_METRIC_COLUMNS,
    SUMMARY,
    VAL_METRIC_COLUMNS,
    WEIGHTS,
    Run,
    is_complete,
    is_unstarted,
    load_model,
    load_run,
    metric_columns,
    read_config,
    read_metrics,
    read_summary,
    remove_run_files,
    row_required_columns,
    save_weights,
    write_config,
    write_metrics,
)
from .io import (
    atomic_write,
    check_path_length,
    check_state,
    is_temporary,
    load_state_into,
    read_json,
    read_tensors,
    write_bytes,
    write_json,
    write_tensors,
)
from .lock import LOCK, RunLock, writer_of

__all__ = [
    "CHECKPOINT", "CONFIG", "FORMAT_VERSION", "LOCK", "METRICS", "METRIC_COLUMNS", "REQUIRED_METRIC_COLUMNS",
    "BEST_WEIGHTS", "SUMMARY", "VAL_METRIC_COLUMNS", "WEIGHTS", "Run",
    "RunLock", "atomic_write", "check_path_length", "check_state", "is_complete", "is_temporary", "is_unstarted",
    "load_model", "metric_columns", "row_required_columns", "writer_of",
    "load_run", "load_state_into", "read_config", "read_json", "read_metrics", "read_summary", "read_tensors",
    "remove_run_files", "save_weights", "write_bytes", "write_config", "write_json", "write_metrics",
    "write_tensors",
]
