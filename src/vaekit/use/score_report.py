"""What ``vaekit score`` writes: the scores as CSV (worst first), the AUROC as JSON, the extremes as a figure.

Beside ``FILE.csv`` go ``FILE_auroc.json`` (with ``--normal``) and ``FILE_extremes.png``; every one of them is
checked before the scoring starts, so a name that is taken fails at once instead of after the work.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.config import ConfigError
from vaekit.run.io import write_bytes
from vaekit.use.outputs import check_output
from vaekit.use.score import METRICS, ScoreTable


def output_paths(out: str | Path) -> dict[str, Path]:
    """The files of one scoring: the CSV, the AUROC JSON and the figure, named after ``out``."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out {out} must name a .csv file (the scores, one row per image)")
    return {"csv": out, "auroc": out.with_name(f"{out.stem}_auroc.json"),
            "figure": out.with_name(f"{out.stem}_extremes.png")}


def check_outputs(paths: dict[str, Path], force: bool, run: str | Path | None = None) -> None:
    """Refuse, before any work, outputs that exist (without ``force``), whose folder does not, or that are the
    files of the ``run`` scored."""
    if not paths["csv"].parent.is_dir():
        raise ConfigError(f"the folder of --out {paths['csv']} does not exist; create it first")
    for path in paths.values():
        check_output(path, force, run=run)


def csv_text(table: ScoreTable) -> str:
    """One row per image, the least likely first: name, label (blank without labels), score in nats, bits/dim."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "label", f"{table.metric}_nats", "bits_per_dim"])
    for i in table.worst_first().tolist():
        label = "" if table.labels is None else int(table.labels[i])
        w.writerow([table.names[i], label, f"{table.score[i]:.6f}", f"{table.bits_per_dim[i]:.6f}"])
    return buf.getvalue()


def extremes_figure(table: ScoreTable) -> Any:
    """The highest-scored images (least likely under the model) over the lowest-scored, each with its score."""
    from vaekit.artifacts.figures import new_figure

    rows = [("highest", table.highest), ("lowest", table.lowest)]
    cols = max(len(e.scores) for _, e in rows)
    fig = new_figure(1.3 * max(cols, 4), 3.4)
    grey = table.highest.pixels is not None and table.highest.pixels.ndim == 3
    for r, (which, e) in enumerate(rows):
        for c in range(len(e.scores)):
            ax = fig.add_subplot(2, cols, r * cols + c + 1)
            ax.imshow(e.pixels[c], cmap="gray" if grey else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{e.scores[c]:.1f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(which, fontsize=9)
    fig.suptitle(f"Highest (least likely) and lowest scores: {METRICS[table.metric]}", fontsize=10)
    return fig


def write_outputs(table: ScoreTable, paths: dict[str, Path], result: dict[str, Any] | None,
                  figure: bool = True) -> list[Path]:
    """Write the CSV, the AUROC JSON (when ``result``) and the figure (when ``figure``); returns what was written."""
    write_bytes(paths["csv"], csv_text(table).encode("utf-8", "surrogateescape"))  # names as on disk
    written = [paths["csv"]]
    if result is not None:
        record = {**result, "score": table.metric, "samples": table.samples, "csv": paths["csv"].name,
                  "n_images": len(table.names)}
        write_bytes(paths["auroc"], (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        written.append(paths["auroc"])
    if figure and len(table.names):
        from vaekit.artifacts.figures import save_figure

        written.append(save_figure(extremes_figure(table), paths["figure"]))
    return written


def summary_lines(table: ScoreTable, result: dict[str, Any] | None) -> list[str]:
    """What the command prints: the mean score with its scale, and the AUROC with the classes it is about."""
    finite = table.score[np.isfinite(table.score)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    bpd = float(table.bits_per_dim[np.isfinite(table.bits_per_dim)].mean()) if len(finite) else float("nan")
    k = f", K={table.samples}" if table.metric == "nll" else ""
    lines = [f"scored {len(table.names)} images: mean {table.metric} {mean:.4f} nats{k}, {bpd:.4f} bits/dim "
             f"({table.scale})"]
    if result is not None:
        lines.append(f"AUROC {result['auroc']:.4f}: {table.metric} telling {result['n_anomalous']} images of classes "
                     f"{', '.join(result['anomalous_names'])} (anomalous) from {result['n_normal']} of "
                     f"{', '.join(result['normal_names'])} (normal)")
    return lines
