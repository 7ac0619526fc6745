"""Anomaly detection by score: which classes are normal, and the AUROC of the score for finding the others.

The AUROC is the probability that an image of an anomalous class (any class not named normal) scores higher
than an image of a normal class, ties counting one half: 0.5 is chance, 1 a perfect ranking. It is computed
with scikit-learn's ``roc_auc_score`` with the anomalies as the positive class and the score as is (a higher
negative log-likelihood: more anomalous).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vaekit.config import ConfigError


def parse_normal(spec: str | Sequence[int | str], labels: np.ndarray | None,
                 class_names: Sequence[str] | None) -> list[int]:
    """The normal classes of ``spec`` (``"0,1,shirt"`` or a list of ids and names) as sorted label ids.

    A name is looked up among ``class_names`` (case-insensitively); an id must be a label of the images.
    The images need labels, and classes on both sides: one line says what is missing otherwise.
    """
    if labels is None:
        raise ConfigError("--normal needs labelled images, and these have no labels: score a folder with one "
                          "subfolder per class, a .npz file with labels, or a split of the run (--split test)")
    tokens = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else [str(t).strip() for t in spec]
    if not tokens or any(t == "" for t in tokens):
        raise ConfigError(f"--normal {spec!r:.60} names no class; give class ids or names separated by commas")
    present = sorted({int(v) for v in np.unique(labels)})
    lookup = {name.lower(): i for i, name in enumerate(class_names or ())}
    normal = set()
    for t in tokens:
        if t.lstrip("-").isdigit() and int(t) in present:
            normal.add(int(t))
        elif t.lower() in lookup:
            normal.add(lookup[t.lower()])
        else:
            known = ", ".join(f"{i}" + (f" ({class_names[i]})" if class_names and i < len(class_names) else "")
                              for i in present)
            raise ConfigError(f"--normal: {t!r:.40} is not a class of these images; they have {known[:300]}")
    if not set(present) - normal:
        raise ConfigError("--normal names every class of these images, so none is anomalous and the AUROC is "
                          "undefined; leave at least one class out")
    if not normal & set(present):
        raise ConfigError("no image is of a --normal class, so the AUROC is undefined; name a class the images have")
    return sorted(normal)


def auroc(scores: np.ndarray, labels: np.ndarray, normal: Sequence[int],
          class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The AUROC of ``scores`` for telling the images of other classes from those of ``normal`` ones, with counts."""
    from sklearn.metrics import roc_auc_score

    anomalous = ~np.isin(labels, list(normal))
    finite = np.isfinite(scores) | np.isposinf(scores)  # +inf: no probability at all, the most anomalous
    if anomalous[finite].all() or not anomalous[finite].any():
        raise ConfigError("the images with a score are all of one side (normal or not), so the AUROC is undefined")
    ranked = np.where(np.isposinf(scores), np.finfo(np.float64).max, scores)[finite]
    value = float(roc_auc_score(anomalous[finite], ranked))

    def names(ids: list[int]) -> list[str]:
        return [class_names[i] if class_names and 0 <= i < len(class_names) else str(i) for i in ids]

    other = sorted({int(v) for v in np.unique(labels[anomalous])})
    return {"auroc": value, "normal": list(normal), "normal_names": names(list(normal)), "anomalous": other,
            "anomalous_names": names(other), "n_normal": int((~anomalous).sum()), "n_anomalous": int(anomalous.sum()),
            "n_unscored": int((~finite).sum()),
            "definition": "P(score of an anomalous image > score of a normal image), ties counting 1/2"}
