"""The two-stage sampler's Gaussian mixture: fitted on the training set's posterior means, kept in the run folder.

A VAE's aggregate posterior (the cloud of the training images' codes) rarely fills the prior N(0, I): prior
draws that fall in the holes decode to blurs or hybrids. Fitting a Gaussian mixture to where the codes are
and drawing from it instead (the "two-stage" sampler of Dai and Wipf, 2019, and pythae's post-hoc GMM
sampler) gives samples that look like the data, at no cost to training.

The fit reads the images the run was trained on, exactly as training saw them (its validation images
left out, a binarized run's copy binarized with the run's recorded seed), never a test image. It is a
pure function of the weights and the settings, so it is fitted once and stored beside the model as
``sampler_gmm.safetensors`` (the mixture's weights, means and covariances) and ``sampler_gmm.json`` (what
it is, the SHA-256 of the weights it was fitted for and of the tensors file). A later call reuses
it while both hashes and the settings match; new weights (a resumed run) refit it.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.config import DEFAULT_COMPONENTS
from vaekit.data.resolve import warn as _warn
from vaekit.errors import RunFolderError, VaekitError
from vaekit.run.io import check_regular, check_state, read_json, read_tensors, write_json, write_tensors

GMM_TENSORS = "sampler_gmm.safetensors"
GMM_INFO = "sampler_gmm.json"
GMM_FORMAT = 1
MAX_COMPONENTS = 1000
# Full covariances up to this many latent dimensions (K x D x D numbers); diagonal ones above, where a full
# matrix per component would cost more to fit than it gains (a hierarchy's top group can have hundreds).
FULL_COVARIANCE_MAX_DIM = 64
COVARIANCE_TYPES = ("full", "diag")
GMM_SEED = 20230803  # the fit's k-means initialisation: a fixed seed, so the fit is a function of the weights
GMM_MAX_ITER = 200
MAX_DIM = 1 << 20  # latent dimensions a stored mixture may claim (a hierarchy's top group is at most this)
MAX_TENSORS_BYTES = 1 << 30  # read at most this much of a stored mixture (K x D x D doubles: far less)


class MixtureError(VaekitError):
    """A stored mixture that cannot be used, or a fit that cannot be made."""


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture over the latent space: component ``weights`` (K,), ``means`` (K, D) and ``covariances``
    (K, D, D) for ``full`` or (K, D) for ``diag``, all float64."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance_type: str

    @property
    def components(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def draw(self, n: int, generator: torch.Generator, temperature: float = 1.0) -> Tensor:
        """``n`` latents (float32, on the CPU): a component by its weight, then its Gaussian with every standard
        deviation times ``temperature``. Drawn with ``generator`` alone, so a seed gives the same draws anywhere."""
        w = torch.from_numpy(self.weights)
        pick = torch.multinomial(w, n, replacement=True, generator=generator)
        eps = torch.randn((n, self.dim), generator=generator, dtype=torch.float64) * temperature
        mean = torch.from_numpy(self.means)[pick]
        cov = torch.from_numpy(self.covariances)
        if self.covariance_type == "full":
            step = torch.einsum("nij,nj->ni", torch.linalg.cholesky(cov)[pick], eps)
        else:
            step = cov.sqrt()[pick] * eps
        return (mean + step).float()


def covariance_type_for(dim: int) -> str:
    return "full" if dim <= FULL_COVARIANCE_MAX_DIM else "diag"


def fit_mixture(means: np.ndarray, components: int = DEFAULT_COMPONENTS, seed: int = GMM_SEED,
                warn: Callable[[str], None] = _warn) -> Mixture:
    """scikit-learn's GaussianMixture fitted to the posterior means (N, D) with ``components`` components."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    means = np.asarray(means, dtype=np.float64)
    if len(means) < components:
        raise MixtureError(f"a mixture of {components} components needs at least {components} training images, "
                           f"and this run has {len(means)}; pass a smaller --components")
    if not np.isfinite(means).all():
        raise MixtureError("the encoder gives non-finite posterior means for some training images, so no mixture "
                           "can be fitted to them; sample with --sampler prior")
    kind = covariance_type_for(means.shape[1])
    gm = GaussianMixture(components, covariance_type=kind, random_state=seed, max_iter=GMM_MAX_ITER)
    with warnings.catch_warnings():  # scikit-learn's multi-line warning becomes the one line below
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(means)
    if not gm.converged_:
        warn(f"the sampler mixture did not converge in {GMM_MAX_ITER} iterations; its samples may be poorer "
             "(try another --components)")
    return Mixture(np.asarray(gm.weights_, np.float64), np.asarray(gm.means_, np.float64),
                   np.asarray(gm.covariances_, np.float64), kind)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights: every tensor's name, dtype, shape and bytes, in name order. It changes when any
    weight does (a resumed or retrained run), and not when the same weights are written again."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a stored mixture's tensors file (a one-line error when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            check_regular(path, os.fstat(f.fileno()).st_mode)
            return hashlib.sha256(f.read(MAX_TENSORS_BYTES)).hexdigest()
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from e


def store_mixture(run_dir: Path, mix: Mixture, weights_hash: str, n_train: int) -> None:
    """Write the mixture's tensors, then the JSON that names them by hash (a reader never trusts a half pair)."""
    tensors = {"weights": torch.from_numpy(mix.weights), "means": torch.from_numpy(mix.means),
               "covariances": torch.from_numpy(mix.covariances)}
    write_tensors(run_dir / GMM_TENSORS, tensors, {"format": str(GMM_FORMAT)})
    import sklearn

    write_json(run_dir / GMM_INFO, {
        "format": GMM_FORMAT, "components": mix.components, "covariance_type": mix.covariance_type,
        "dim": mix.dim, "seed": GMM_SEED, "n_train": int(n_train), "weights_sha256": weights_hash,
        "tensors_sha256": file_sha256(run_dir / GMM_TENSORS), "scikit_learn": sklearn.__version__,
        "fitted_on": "posterior means of the training split (validation images left out)",
    })


_INFO_TYPES: dict[str, Any] = {"format": int, "components": int, "covariance_type": str, "dim": int, "seed": int,
                               "n_train": int, "weights_sha256": str, "tensors_sha256": str}


def read_info(run_dir: Path) -> dict[str, Any] | None:
    """``sampler_gmm.json`` checked entry by entry, or None when the run has no stored mixture."""
    path = run_dir / GMM_INFO
    if not path.exists() and not path.is_symlink():
        return None
    info = read_json(path)
    if not isinstance(info, dict):
        raise MixtureError(f"{path} holds a JSON {type(info).__name__}, not an object")
    for key, kind in _INFO_TYPES.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise MixtureError(f"{path}: {key} is {info.get(key)!r:.40}, expected {kind.__name__}")
    if info["format"] != GMM_FORMAT or info["covariance_type"] not in COVARIANCE_TYPES:
        raise MixtureError(f"{path} is of a format or covariance type this vaekit does not write")
    if not 1 <= info["components"] <= MAX_COMPONENTS or not 1 <= info["dim"] <= MAX_DIM:
        raise MixtureError(f"{path}: components or dim out of range")
    return info


def load_mixture(run_dir: Path, info: dict[str, Any]) -> Mixture:
    """The stored tensors, checked against ``info``: the hash, names, shapes, dtype, finiteness, and a mixture
    that draws (weights summing to 1, covariances positive definite). Every problem is one line."""
    path = run_dir / GMM_TENSORS
    if file_sha256(path) != info["tensors_sha256"]:
        raise MixtureError(f"{path} is not the file {GMM_INFO} was written with (its SHA-256 differs)")
    tensors, _ = read_tensors(path)
    k, d, kind = info["components"], info["dim"], info["covariance_type"]
    expected = {"weights": torch.empty(k, dtype=torch.float64), "means": torch.empty(k, d, dtype=torch.float64),
                "covariances": torch.empty((k, d, d) if kind == "full" else (k, d), dtype=torch.float64)}
    check_state(expected, tensors, path)
    mix = Mixture(*(tensors[name].numpy() for name in ("weights", "means", "covariances")), kind)
    if (mix.weights < 0).any() or not math.isclose(float(mix.weights.sum()), 1.0, abs_tol=1e-6):
        raise MixtureError(f"{path}: the component weights are not a distribution")
    cov = torch.from_numpy(mix.covariances)
    ok = torch.linalg.cholesky_ex(cov).info.eq(0).all() if kind == "full" else bool((cov > 0).all())
    if not ok:
        raise MixtureError(f"{path}: a covariance is not positive definite")
    return mix
