"""The images given to a trained model, prepared exactly as the run's own data were: :func:`open_inputs`.

A run's model only makes sense of images prepared the way its training images were: the same size (a run
trained with ``--image-size N`` resized and centre-cropped every image to NxN; one trained without it took
its images' own size), the same channels and the same pixel values (``uint8`` divided by 255, per batch, by
:func:`vaekit.data.tensors.to_unit`). The images come from:

* a folder of image files (class subfolders give labels, as in training), or one image file, decoded by the
  decoder training used (:func:`vaekit.data.images.decode_image`) on a thread pool;
* a ``.npy``/``.npz`` file, or an in-memory array or tensor, read by training's array reader
  (:mod:`vaekit.data.arrays`) and converted a batch at a time by its conversion;
* the run's own ``train`` or ``test`` split, rebuilt by :func:`vaekit.run.dataset.load_run_data` (the test images
  of a run trained with ``--binarize`` are the binarized copy it was evaluated on).

Channels follow training: a grey image given to a colour model is repeated into three channels (as training
did with the grey files of a mixed folder), and a colour image given to a grey model is refused unless the run
was trained with ``--channels 1`` (which converted every image to grey). A size other than the model's is
refused unless the run recorded an ``--image-size``. A file that cannot be used stops the whole read with one
line naming it, as in training; ``skip_bad`` leaves such files out with one warning instead.

Memory: the prepared ``uint8`` pixels of a folder (one array, allocated once), a memory map of a ``.npy``
file, or the caller's own array; every float tensor is one batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from vaekit.config import RUN_SPLITS, USE_BATCH_SIZE, ConfigError
from vaekit.data.arrays import convert_chunk, read_array_file, read_array_source
from vaekit.data.binarize import binarize_batch
from vaekit.data.errors import BadInputError
from vaekit.data.folder import bad_files_error, parallel_map, plan_folder, warn_ignored
from vaekit.data.images import FORMAT_NAMES, IMAGE_EXTENSIONS, ImageProblem, decode_image, probe_image
from vaekit.data.memory import check_fits
from vaekit.data.resolve import warn
from vaekit.data.tensors import as_rows, to_unit
from vaekit.run.dataset import RunRecord, load_run_data

if TYPE_CHECKING:
    from vaekit.model import VAE

__all__ = ["Batch", "Inputs", "Preparation", "TrainedRun", "open_inputs", "preparation"]

ARRAY_SUFFIXES = (".npy", ".npz")
DEFAULT_BATCH = USE_BATCH_SIZE


class TrainedRun(RunRecord, Protocol):
    """A trained run as the functions here use it: its record and its model (a :class:`vaekit.run.Run` is one;
    that class is not imported, as its methods call these functions)."""

    model: VAE


@dataclass
class Batch:
    """One batch of prepared images: the model's input and what to show or name beside each image."""

    x: torch.Tensor  # the model's input for these images, exactly as training fed it (on the device)
    pixels: np.ndarray  # the same images as uint8, (n, H, W) grey or (n, H, W, 3) colour, as prepared
    names: list[str]  # each image's file path (folder/file input), or "train:17"/"test:3"/"array:5"
    labels: np.ndarray | None  # int labels where the source has them (run splits, class subfolders), else None


@dataclass(frozen=True)
class Preparation:
    """How a run's images were prepared, read from its config: what every image given to it must become."""

    height: int
    width: int
    channels: int  # 1 (grey) or 3 (colour)
    image_size: int | None  # training resized and centre-cropped every image to NxN (None: taken as found)
    any_channels: bool  # training was told --channels, so it converted images of either kind to `channels`
    binarize: str  # the run's --binarize mode ("none", "dynamic", "static")
    binarize_seed: int  # the seed of its evaluation's binarized copy

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one prepared image, as the data layer holds it: (H, W) or (H, W, 3)."""
        return (self.height, self.width) + ((3,) if self.channels == 3 else ())

    def size_text(self) -> str:
        return f"{self.width}x{self.height} {'colour' if self.channels == 3 else 'grey'}"


def preparation(run: TrainedRun) -> Preparation:
    """The preparation recorded for ``run``: its model's image shape and its data record's options."""
    shape = tuple(run.model_config.image_shape)
    own = run.data.get("own") if isinstance(run.data.get("own"), dict) else {}
    size = own.get("image_size", run.train_config.image_size)
    option = own.get("channels_option", run.train_config.channels) if own else run.train_config.channels
    return Preparation(height=int(shape[0]), width=int(shape[1]), channels=3 if len(shape) == 3 else 1,
                       image_size=size if isinstance(size, int) else None, any_channels=option is not None,
                       binarize=run.train_config.binarize, binarize_seed=int(run.train_config.binarize_seed))


class Inputs:
    """Images ready for a run's model, read a batch at a time by :meth:`batches`.

    ``images`` holds them as ``uint8`` either prepared already (decoded files, a run's split) or as their
    source gave them (``convert``: an array converted per batch). ``names`` gives each image's file path, or
    ``prefix`` names image i ``f"{prefix}:{i}"``. ``binarize`` draws each batch's binary pixels from one
    generator seeded with the run's evaluation seed, so the draws are those of the run's test copy.
    """

    def __init__(self, images: np.ndarray, prep: Preparation, *, names: list[str] | None = None,
                 prefix: str = "array", labels: np.ndarray | None = None, class_names: list[str] | None = None,
                 convert: bool = False, binarize: bool = False, skipped: Sequence[tuple[str, str]] = ()) -> None:
        self.images, self.preparation, self.labels, self.class_names = images, prep, labels, class_names
        self._names, self._prefix, self._convert, self._binarize = names, prefix, convert, binarize
        self.skipped = list(skipped)  # (path, problem) of the files left out with skip_bad

    @property
    def n(self) -> int:
        """Number of images."""
        return len(self.images)

    def name(self, i: int) -> str:
        return self._names[i] if self._names is not None else f"{self._prefix}:{i}"

    def batches(self, batch_size: int = DEFAULT_BATCH, device: str | torch.device = "cpu") -> Iterator[Batch]:
        """The images in order, ``batch_size`` at a time, as the model's float input on ``device``."""
        check_batch_size(batch_size)
        generator = torch.Generator().manual_seed(self.preparation.binarize_seed) if self._binarize else None
        for start in range(0, self.n, batch_size):
            stop = min(start + batch_size, self.n)
            chunk = np.asarray(self.images[start:stop])
            if self._convert:
                chunk = convert_chunk(chunk, self.preparation.channels, self.preparation.image_size)
            if generator is not None:  # on the CPU, in order: the draws of binarize_images with the same seed
                unit = binarize_batch(to_unit(as_rows(np.ascontiguousarray(chunk))), generator)
                chunk = unit.mul_(255).to(torch.uint8).numpy().reshape(chunk.shape)
            pixels = np.ascontiguousarray(chunk)
            x = to_unit(as_rows(pixels).to(device))
            labels = None if self.labels is None else np.asarray(self.labels[start:stop])
            yield Batch(x=x, pixels=pixels, names=[self.name(i) for i in range(start, stop)], labels=labels)


def check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer (got {batch_size!r:.40})")


def open_inputs(run: TrainedRun, source: str | os.PathLike | np.ndarray | torch.Tensor | None = None, *,
                split: str | None = None, skip_bad: bool = False, binarize: bool = False,
                data_dir: str | os.PathLike | None = None, progress: bool = False) -> Inputs:
    """The images of ``source`` prepared for ``run``'s model (see the module docstring).

    ``source``: a folder, an image file, a ``.npy``/``.npz`` array file, an in-memory ``uint8``/float array or
    tensor ((N, H, W), (N, H, W, C), or one (H, W) image); or ``None`` with ``split`` ``"train"``/``"test"`` for
    the run's own splits (``data_dir``: where the run's data is now, if not where training found it).
    ``skip_bad`` leaves out the files of a folder that cannot be used (with one warning) instead of refusing the
    folder. ``binarize``: for a run trained with ``--binarize``, draw binary pixels from the given grey levels
    with the run's evaluation seed (the test split is always the run's binarized test copy). ``progress``: a
    progress bar while a folder is decoded. Every problem is one :class:`~vaekit.data.DataError` or
    :class:`~vaekit.config.ConfigError` line.
    """
    prep = preparation(run)
    if split is not None:
        if source is not None:
            raise ConfigError("give either images or a split of the run, not both")
        return _split_inputs(run, prep, split, data_dir)
    if source is None:
        raise ConfigError(f"no images given: pass a folder, an image file, a .npy/.npz file or an array, or a "
                          f"split of the run ({' or '.join(RUN_SPLITS)})")
    binarize = binarize and prep.binarize != "none"
    if not isinstance(source, (str, os.PathLike)):
        _refuse_flat_rows(source, prep)
        return _array_inputs(_stack(source), prep, None, binarize)
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_inputs(path, prep, skip_bad, binarize, progress)
    if path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES:
        return _array_inputs(path, prep, path, binarize)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return _file_inputs(path, prep, binarize)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder; pass a folder of images, an image file, or a .npy or "
                            ".npz file")
    raise BadInputError(f"{path}: not an image ({FORMAT_NAMES}), a folder of images, or a .npy or .npz file")


def _split_inputs(run: TrainedRun, prep: Preparation, split: str, data_dir: str | os.PathLike | None) -> Inputs:
    """The run's own training or test images, found and checked as ``vaekit evaluate`` finds them."""
    if split not in RUN_SPLITS:
        raise ConfigError(f"unknown split {split!r:.40}; choose one of {', '.join(RUN_SPLITS)}")
    splits = load_run_data(run, data_dir)
    images = splits.test_images if split == "test" else splits.train_images
    labels = splits.test_labels if split == "test" else splits.train_labels
    names = list(splits.class_names) if splits.class_names is not None else None
    return Inputs(images, prep, prefix=split, labels=labels, class_names=names)


def _refuse_flat_rows(source: Any, prep: Preparation) -> None:
    """A 2-D array whose rows each hold one whole image's values, (N, H*W[*3]) as many datasets ship, would be
    read as one N-pixel-high image: refused with the reshape that makes it images (a run with an --image-size
    would otherwise resize that strip and encode nonsense without a word)."""
    shape = tuple(getattr(source, "shape", ()))
    if len(shape) == 2 and shape[1] == int(np.prod(prep.shape)) and shape[0] != prep.height:
        dims = ", ".join(str(d) for d in prep.shape)
        raise BadInputError(f"the array given: shape {shape} looks like {shape[0]:,} flattened images, one a row; "
                            f"reshape them to images first: x.reshape(-1, {dims})")


def _stack(source: Any) -> Any:
    """An in-memory source with one (H, W) image as a stack of one."""
    shape = getattr(source, "shape", None)
    return source[None] if shape is not None and len(shape) == 2 else source


def _array_inputs(source: Any, prep: Preparation, path: Path | None, binarize: bool) -> Inputs:
    """An array (file or in memory) read as training reads one, checked against the run, converted per batch."""
    raw = read_array_file(path, min_images=1) if path is not None else read_array_source(source, min_images=1)
    where = str(path) if path is not None else "the array given"
    images = raw.images
    colour = images.ndim == 4
    if colour and prep.channels == 1 and not prep.any_channels:
        raise BadInputError(f"{where}: images are colour, shape {images.shape}, but the run was trained on grey "
                            "images; convert them to grey (one channel) first")
    if prep.image_size is None and tuple(images.shape[1:3]) != (prep.height, prep.width):
        raise BadInputError(f"{where}: images are {images.shape[2]}x{images.shape[1]} (width x height), shape "
                            f"{images.shape}, but the run's model takes {prep.size_text()} images; resize them")
    prefix = str(path) if path is not None else "array"
    return Inputs(images, prep, prefix=prefix, labels=raw.labels, class_names=raw.class_names, convert=True,
                  binarize=binarize)


def _decode_for(path: Path, prep: Preparation) -> np.ndarray:
    """One image file decoded as training decoded it for this run; refused (:class:`ImageProblem`) if it cannot
    become one of the run's images without a conversion training never made."""
    probe = probe_image(path)
    if not probe.grey and prep.channels == 1 and not prep.any_channels:
        raise ImageProblem("is a colour image but the run was trained on grey ones; convert it to grey")
    if prep.image_size is None and (probe.height, probe.width) != (prep.height, prep.width):
        raise ImageProblem(f"is {probe.width}x{probe.height} but the run's model takes {prep.size_text()} images; "
                           "resize it")
    array = decode_image(path, channels=prep.channels, image_size=prep.image_size)
    if array.shape != prep.shape:
        raise ImageProblem(f"decodes to shape {array.shape}, not the {prep.shape} the run's model takes")
    return array


def _file_inputs(path: Path, prep: Preparation, binarize: bool) -> Inputs:
    try:
        array = _decode_for(path, prep)
    except ImageProblem as exc:
        raise BadInputError(f"{path}: {exc}") from exc
    return Inputs(array[None], prep, names=[str(path)], binarize=binarize)


def _folder_inputs(root: Path, prep: Preparation, skip_bad: bool, binarize: bool, progress: bool) -> Inputs:
    """Every image of a folder decoded into one preallocated array; unusable files refused or skipped."""
    plan = plan_folder(root)
    for note in plan.notes:
        warn(note)
    warn_ignored(plan)
    if not plan.entries and not plan.bad:
        raise BadInputError(f"{root}: holds no images; vaekit reads {FORMAT_NAMES} files in a folder and its "
                            "subfolders")
    n, size = len(plan.entries), int(np.prod(prep.shape))
    check_fits(n * size, f"{root}: the {n:,} decoded {prep.size_text()} images", "use fewer images at a time")
    out = np.empty((n, *prep.shape), dtype=np.uint8)

    def work(slots: Sequence[int]) -> list[tuple[str, str]]:
        failed = []
        for slot in slots:
            try:
                out[slot] = _decode_for(root / plan.entries[slot].rel, prep)
            except ImageProblem as exc:
                failed.append((plan.entries[slot].rel, str(exc)))
        return failed

    bad = sorted(plan.bad + parallel_map(work, range(n), "decoding images", progress))
    if bad and not skip_bad:
        raise bad_files_error(root, bad)
    dropped = {rel for rel, _ in bad}
    keep = [i for i, e in enumerate(plan.entries) if e.rel not in dropped]
    if len(keep) < n:
        out = _compact(out, keep)
    if bad:
        rel, problem = bad[0]
        warn(f"skipped {len(bad):,} of {n + len(plan.bad):,} image files in {root} that cannot be used (e.g. {rel}: "
             f"{problem})")
    if not keep:
        raise BadInputError(f"{root}: none of its {len(bad):,} image files can be used; replace them")
    labels = None if plan.labels is None else np.asarray(plan.labels, np.int64)[keep]
    return Inputs(out, prep, names=[str(root / plan.entries[i].rel) for i in keep], labels=labels,
                  class_names=plan.class_names, binarize=binarize, skipped=bad)


def _compact(out: np.ndarray, keep: list[int]) -> np.ndarray:
    """The rows ``keep`` (increasing) moved to the front of ``out`` in place: no second copy of the pixels."""
    for dst, src in enumerate(keep):
        if dst != src:
            out[dst] = out[src]
    return out[: len(keep)]
