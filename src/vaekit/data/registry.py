"""The datasets vaekit knows how to find, verify and download.

Each :class:`DatasetSpec` lists its files: four IDX files (MNIST and its relatives), or one archive that holds
both splits (CIFAR-10, whose :attr:`DatasetSpec.archive` stands for all four roles). Each file has two
independent checksums:

* ``md5``: the MD5 of the official ``.gz`` file, as published with the dataset (and used by torchvision). It
  identifies a fresh download from an official mirror.
* ``sha256``: the SHA-256 of the *decompressed* file. Distributions (Debian, for one) and users recompress the
  files, which changes the ``.gz`` bytes but not the data, so this is what identifies the data itself. It is
  also the only way to verify an uncompressed copy.

A file verifies when either digest matches. Users can :func:`register` their own datasets, or re-register a
built-in one with extra mirrors.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .cifar import CIFAR10_CLASSES
from .errors import DataError

__all__ = [
    "ARCHIVE",
    "DATASETS",
    "EMBEDDED_NAME",
    "FORMATS",
    "ROLES",
    "DatasetSpec",
    "FileSpec",
    "cache_dir",
    "get_spec",
    "known_names",
    "normalise_name",
    "provided_roles",
    "register",
]

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
# The key of a dataset's single archive in DatasetSpec.files(); the archive provides every role.
ARCHIVE = "archive"
# File formats vaekit decodes: an IDX file holds one array; a CIFAR-10 binary archive holds all four.
FORMATS = ("idx", "cifar10-binary")
# Name of the MNIST subset shipped inside vaekit; it is not an IDX dataset, so it has no DatasetSpec.
EMBEDDED_NAME = "mnist-embedded"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HEX_RE = {32: re.compile(r"^[0-9a-f]{32}$"), 64: re.compile(r"^[0-9a-f]{64}$")}


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: its official compressed name, known digests (``None``: unknown), its format."""

    filename: str
    md5: str | None = None
    sha256: str | None = None
    format: str = "idx"

    @property
    def raw_name(self) -> str:
        """The uncompressed file name (what torchvision extracts and what many mirrors of the data use)."""
        return self.filename[:-3] if self.filename.endswith(".gz") else self.filename

    def candidate_names(self) -> tuple[str, ...]:
        """File names under which a copy of this file is accepted, in order of preference.

        Besides the official ``.gz`` and uncompressed names this includes the dotted variant
        (``train-images.idx3-ubyte``) used by some widely shared copies of MNIST.
        """
        names = [self.filename, self.raw_name]
        dotted = re.sub(r"-(idx\d)", r".\1", self.raw_name, count=1)
        names += [dotted, dotted + ".gz"]
        return tuple(dict.fromkeys(names))

    @property
    def has_reference(self) -> bool:
        return self.md5 is not None or self.sha256 is not None


@dataclass(frozen=True)
class DatasetSpec:
    """Where to find and how to check one dataset: four IDX files (train and test), or one ``archive``.

    ``torchvision_folder`` is the folder name torchvision uses (``<root>/<folder>/raw``), so copies downloaded
    by torchvision are found without downloading again. ``mirrors`` are URL prefixes tried in order.
    ``image_shape`` ((H, W), or (H, W, 3) for colour) and ``num_classes`` (``None``: any) are checked on load so
    a wrong file is caught early; ``class_names`` name labels 0, 1, ... where known.
    """

    name: str
    description: str
    train_images: FileSpec | None = None
    train_labels: FileSpec | None = None
    test_images: FileSpec | None = None
    test_labels: FileSpec | None = None
    mirrors: tuple[str, ...] = ()
    torchvision_folder: str | None = None
    image_shape: tuple[int, ...] | None = (28, 28)
    num_classes: int | None = 10
    archive: FileSpec | None = None
    class_names: tuple[str, ...] | None = None

    def files(self) -> dict[str, FileSpec]:
        """The files keyed by role (``train_images``, ``train_labels``, ...), or ``{"archive": ...}``."""
        if self.archive is not None:
            return {ARCHIVE: self.archive}
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}


def provided_roles(key: str) -> tuple[str, ...]:
    """The roles the file under ``key`` of :meth:`DatasetSpec.files` provides: all of them for an archive."""
    return ROLES if key == ARCHIVE else (key,)


def _standard_files(digests: dict[str, tuple[str | None, str | None]]) -> dict[str, FileSpec]:
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    return {role: FileSpec(names[role], *digests[role]) for role in ROLES}


_DIGITS = tuple(str(d) for d in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
            "Ankle boot")
_KUZUSHIJI = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


# Official .gz MD5s as listed in torchvision/datasets/mnist.py; SHA-256 of the decompressed files where known.
_BUILTIN = (
    DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits, 60,000 train / 10,000 test, 28x28 grey",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        torchvision_folder="MNIST",
        class_names=_DIGITS,
        **_standard_files(
            {
                "train_images": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", None),
                "train_labels": (
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                ),
                "test_images": (
                    "9fb629c4189551a2d022fa330f9573f3",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                ),
                "test_labels": (
                    "ec29112dd5afa0611ce80d1b7f02629c",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                ),
            }
        ),
    ),
    DatasetSpec(
        name="fashion-mnist",
        description="Fashion-MNIST (Zalando) clothing images, 60,000 train / 10,000 test, 28x28 grey",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        torchvision_folder="FashionMNIST",
        class_names=_FASHION,
        **_standard_files(
            {
                "train_images": (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                ),
                "train_labels": (
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                ),
                "test_images": (
                    "bef4ecab320f06d8554ea6380940ec79",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                ),
                "test_labels": (
                    "bb300cfdad3c16e7a12a480ee83cd310",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                ),
            }
        ),
    ),
    DatasetSpec(
        name="kmnist",
        description="Kuzushiji-MNIST cursive Japanese characters, 60,000 train / 10,000 test, 28x28 grey",
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        torchvision_folder="KMNIST",
        class_names=_KUZUSHIJI,
        **_standard_files(
            {
                "train_images": ("bdb82020997e1d708af4cf47b453dcf7", None),
                "train_labels": ("e144d726b3acfaa3e44228e80efcd344", None),
                "test_images": ("5c965bf0a639b31b8f53240b1b52f4d7", None),
                "test_labels": ("7320c461ea6c1c855c0b718fb2a4b134", None),
            }
        ),
    ),
    DatasetSpec(
        name="cifar10",
        description="CIFAR-10 tiny photos in 10 classes, 50,000 train / 10,000 test, 32x32 colour",
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        # The MD5 published on the CIFAR page for the binary version; the records' SHA-256 is not published.
        archive=FileSpec("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", format="cifar10-binary"),
        image_shape=(32, 32, 3),
        class_names=CIFAR10_CLASSES,
    ),
)

DATASETS: dict[str, DatasetSpec] = {}


def normalise_name(name: str) -> str:
    """Lower-case and use hyphens, so ``"Fashion_MNIST"`` and ``"fashion-mnist"`` name the same dataset."""
    return name.strip().lower().replace("_", "-")


def register(spec: DatasetSpec) -> None:
    """Add ``spec`` to :data:`DATASETS`, replacing any dataset of the same name.

    Replacing is deliberate: re-registering a built-in with ``dataclasses.replace(spec, mirrors=...)`` is how
    a site adds its own mirror. The spec is checked here so a typo fails at registration, not mid-download.
    """
    name = normalise_name(spec.name)
    if not _NAME_RE.match(name) or name == EMBEDDED_NAME:
        raise DataError(
            f"cannot register dataset name {spec.name!r}: use lower-case letters, digits, '.', '_' or '-' "
            f"(and not {EMBEDDED_NAME!r}, which is reserved)"
        )
    if spec.archive is None and len(spec.files()) != len(ROLES):
        raise DataError(f"dataset {name!r}: give all four files ({', '.join(ROLES)}) or one archive")
    for role, fspec in spec.files().items():
        if fspec.format not in FORMATS or (role == ARCHIVE) == (fspec.format == "idx"):
            allowed = "an archive format" if role == ARCHIVE else "'idx'"
            raise DataError(f"dataset {name!r}: {role} format {fspec.format!r} is not {allowed} ({', '.join(FORMATS)})")
        if not fspec.filename or "/" in fspec.filename or "\\" in fspec.filename:
            raise DataError(
                f"dataset {name!r}: {role} file name {fspec.filename!r} must be a plain file name"
            )
        for kind, value, length in (("md5", fspec.md5, 32), ("sha256", fspec.sha256, 64)):
            if value is not None and not _HEX_RE[length].match(value):
                raise DataError(
                    f"dataset {name!r}: {role} {kind} {value!r} is not {length} lower-case hex digits"
                )
    mirrors = tuple(m if m.endswith("/") else m + "/" for m in spec.mirrors)
    DATASETS[name] = dataclasses.replace(spec, name=name, mirrors=mirrors)


for _spec in _BUILTIN:
    register(_spec)


def known_names() -> list[str]:
    """Every name :func:`vaekit.data.load_splits` accepts, the embedded subset included."""
    return [*DATASETS, EMBEDDED_NAME]


def get_spec(name: str) -> DatasetSpec:
    """Look up a registered dataset, raising a :class:`DataError` that lists the known names."""
    key = normalise_name(name)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(known_names())}")
    return DATASETS[key]


def cache_dir() -> Path:
    """Folder holding downloaded datasets: ``$VAEKIT_DATA`` if set, else the user cache folder + ``/data``."""
    env = os.environ.get("VAEKIT_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("vaekit")) / "data"
