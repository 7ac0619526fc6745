"""Typed configuration for models and training runs.

A run is described completely by a :class:`ModelConfig` (what to build) and a :class:`TrainConfig`
(how to train it). Both round-trip through plain JSON so a saved model can be rebuilt without the code
or command line that trained it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """An invalid setting; the message is one line naming the setting and the allowed values."""


ACTIVATIONS = ("elu", "relu", "tanh", "gelu", "silu", "leaky_relu")

# Each preset is a ModelConfig minus the latent size, plus that size's default.
PRESETS: dict[str, dict] = {
    # The blog post's model: 784-256-64-32-2z encoder and z-32-64-256-784 decoder with ELU, and no
    # activation between the decoder's first two layers (kept on purpose: 439,956 parameters at zdim 2).
    "seed": dict(
        zdim=2,
        encoder_hidden=[256, 64, 32],
        decoder_hidden=[32, 64, 256],
        activation="elu",
        skip_first_decoder_activation=True,
    ),
    # A configurable symmetric MLP; ``--hidden`` sets the encoder sizes, the decoder mirrors them.
    "mlp": dict(
        zdim=2,
        encoder_hidden=[512, 256],
        decoder_hidden=[256, 512],
        activation="elu",
        skip_first_decoder_activation=False,
    ),
    # The one-stochastic-layer model of the IWAE paper (Burda, Grosse and Salakhutdinov, 2016): two
    # deterministic tanh layers of 200 units each way around a 50-dimensional latent.
    "burda": dict(
        zdim=50,
        encoder_hidden=[200, 200],
        decoder_hidden=[200, 200],
        activation="tanh",
        skip_first_decoder_activation=False,
    ),
    # The VAE of PyTorch's examples repository: one ReLU layer of 400 units each way, zdim 20.
    "pytorch-example": dict(
        zdim=20,
        encoder_hidden=[400],
        decoder_hidden=[400],
        activation="relu",
        skip_first_decoder_activation=False,
    ),
    # A convolutional VAE for any image size: strided 3x3 convolutions doubling the channels (32-64-128-256,
    # times --width) down to about 4x4, mirrored by nearest-neighbour upsampling and 3x3 convolutions (no
    # transposed convolutions, hence no checkerboard); zdim 32.
    "conv": dict(
        architecture="conv",
        zdim=32,
        encoder_hidden=[32, 64, 128, 256],
        decoder_hidden=[256, 128, 64, 32],
        activation="leaky_relu",
        skip_first_decoder_activation=False,
        upsample="nearest",
    ),
    # After PyTorch-VAE's VanillaVAE (made for 64x64 colour CelebA): five strided 3x3 convolutions of
    # 32-64-128-256-512 channels with LeakyReLU, zdim 128, the decoder mirrored, without its batch norm.
    "pytorch-vae-vanilla": dict(
        architecture="conv",
        zdim=128,
        encoder_hidden=[32, 64, 128, 256, 512],
        decoder_hidden=[512, 256, 128, 64, 32],
        activation="leaky_relu",
        skip_first_decoder_activation=False,
        upsample="transposed",
    ),
    # A hierarchical VAE after VDVAE/NVAE (model/hierarchical.py): residual blocks bottom-up and top-down at
    # four resolutions (28 -> 14 -> 7 -> 4; 32 -> 16 -> 8 -> 4), latent groups of zdim channels per position,
    # latent_groups of them per level from the coarsest (1 at 4x4, 2 at 7x7, 2 at 14x14, none at full size).
    "hvae": dict(
        architecture="hierarchical",
        zdim=4,
        encoder_hidden=[32, 64, 64, 64],
        decoder_hidden=[64, 64, 64, 32],
        latent_groups=[1, 2, 2, 0],
        activation="gelu",
        skip_first_decoder_activation=False,
    ),
}
ARCHITECTURES = ("mlp", "conv", "hierarchical")
# How a conv decoder doubles its size: 3x3 transposed convolutions with stride 2 (PyTorch-VAE's, and the conv
# preset's before it changed), or nearest-neighbour upsampling followed by a 3x3 convolution.
UPSAMPLING = ("transposed", "nearest")
# Residual blocks a conv model may add after each level of its encoder and decoder (model/conv.py).
RES_BLOCKS = (0, 1, 2, 3, 4)

# The causal context of an 8-bit head (model/context.py): 0 for none (each pixel's distribution from z alone), or
# the radius N of the window of earlier pixels each pixel's distribution also reads: the N rows above it and the
# N pixels either side of it in those rows, and the N pixels before it in its own row (a (2N+1)^2 masked kernel).
CONTEXTS = (0, 1, 2, 3)


@dataclass
class ModelConfig:
    """Architecture of a VAE over flattened images: an MLP, or convolutions (``architecture`` "conv").

    For an MLP, ``encoder_hidden``/``decoder_hidden`` are layer widths; for a conv model they are the
    channels of each level (encoder order, then mirrored). ``skip_first_decoder_activation`` reproduces the
    original blog model, whose decoder has no non-linearity between its first two linear layers.
    """

    preset: str = "seed"
    architecture: str = "mlp"
    zdim: int = 2
    image_shape: tuple[int, ...] = (28, 28)  # (H, W) for grey images, (H, W, 3) for colour
    encoder_hidden: list[int] = field(default_factory=lambda: [256, 64, 32])
    decoder_hidden: list[int] = field(default_factory=lambda: [32, 64, 256])
    activation: str = "elu"
    skip_first_decoder_activation: bool = True
    # A per-pixel decoder log standard deviation, a weight of the model (gaussian likelihood only),
    # starting at log(sigma_init); stored here so config.json alone rebuilds the parameter.
    learn_sigma: bool = False
    sigma_init: float = 1.0
    # How a conv decoder goes up a level (see UPSAMPLING). A config.json without it was written when every conv
    # decoder used transposed convolutions, so that is what it rebuilds.
    upsample: str = "transposed"
    # Hierarchical only: latent groups per level of encoder_hidden, from the coarsest level (the first >= 1).
    latent_groups: list[int] = field(default_factory=list)
    # What the decoder outputs per sub-pixel (one of HEADS): "logits" for every likelihood but the 8-bit heads,
    # whose parameters it outputs instead; configs stored before heads existed load as "logits".
    head: str = "logits"
    mixtures: int = 0  # components of the logistic-mixture head (0 for every other head)
    res_blocks: int = 0  # conv only: residual blocks after each level (one of RES_BLOCKS); stored configs load as 0
    context: int = 0  # radius of the causal window of earlier pixels the head also reads (one of CONTEXTS; 0: none)

    @property
    def input_dim(self) -> int:
        return int(math.prod(self.image_shape))

    def validate(self) -> None:
        _positive_int("zdim", self.zdim, MAX_ZDIM)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown model preset {self.preset!r:.40}; choose one of {', '.join(PRESETS)}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.upsample not in UPSAMPLING:
            raise ConfigError(f"unknown upsample {self.upsample!r:.40}; choose one of {', '.join(UPSAMPLING)}")
        for name in ("encoder_hidden", "decoder_hidden"):
            sizes = getattr(self, name)
            if not sizes or not all(_int_between(h, 1, MAX_WIDTH) for h in sizes):
                raise ConfigError(f"{name} must be a non-empty list of integers from 1 to {MAX_WIDTH:,} "
                                  f"(got {_short(sizes)})")
        shape = tuple(self.image_shape)
        if len(shape) not in (2, 3) or any(not 1 <= int(s) <= 2**15 for s in shape) or (
                len(shape) == 3 and shape[2] not in CHANNELS):
            raise ConfigError(f"image_shape must be (H, W) or (H, W, 3) with positive sizes (got {self.image_shape!r})")
        if not (isinstance(self.sigma_init, (int, float)) and 0 < self.sigma_init < float("inf")):
            raise ConfigError(f"sigma_init must be a positive finite number (got {self.sigma_init!r})")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r:.40}; choose one of {', '.join(HEADS)}")
        if self.head == "logistic-mixture":
            _positive_int("mixtures", self.mixtures, MAX_MIXTURES)
        elif self.mixtures != 0:
            raise ConfigError(f"mixtures is for the logistic-mixture head only (got {_short(self.mixtures)} "
                              f"with head {self.head!r}): set it to 0")
        if self.learn_sigma and self.head != "logits":
            raise ConfigError(f"learn_sigma adds one scale per pixel for every image; the {self.head} head takes its "
                              "scales from z: set learn_sigma to false")
        if not _int_between(self.res_blocks, RES_BLOCKS[0], RES_BLOCKS[-1]) or (
                self.res_blocks and self.architecture != "conv"):
            raise ConfigError(f"res_blocks must be one of {_listed(RES_BLOCKS)} for a conv model, 0 for any other "
                              f"(got {_short(self.res_blocks)} for a {self.architecture} model)")
        if self.architecture == "hierarchical":
            self._validate_groups()
        self._validate_context()

    def _validate_context(self) -> None:
        """A causal context needs an 8-bit head (its log p(x|z) reads the image's own 8-bit values) and a flat
        model (a hierarchy's sampling and in-page decoding have no place for the pixel-by-pixel pass)."""
        _check_context(self.context)
        why = context_misfit(self.head, self.architecture)
        if self.context and why:
            raise ConfigError(why)

    def _validate_groups(self) -> None:
        """A hierarchy's latent groups: one count per level, the coarsest level holding the first group."""
        g = self.latent_groups
        if (not isinstance(g, list) or len(g) != len(self.encoder_hidden) or not g
                or not all(_int_between(n, 0, 64) for n in g) or g[0] < 1):
            raise ConfigError(f"latent_groups must give 0 to 64 groups for each of the {len(self.encoder_hidden)} "
                              f"levels, at least one at the coarsest (got {_short(g)})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        cfg = cls(**_known(cls, d))
        cfg.image_shape = tuple(int(v) for v in cfg.image_shape)
        cfg.encoder_hidden = list(cfg.encoder_hidden)
        cfg.decoder_hidden = list(cfg.decoder_hidden)
        cfg.latent_groups = list(cfg.latent_groups)
        return cfg


CHANNELS = (1, 3)  # grey or colour images
# Bounds of sense, checked before anything runs: beyond them a setting is a mistake, not a plan.
MAX_EPOCHS = 1_000_000
MAX_BATCH = 2**24
MAX_GRID = 200  # cells per side of the latent grid: 40,000 decoded images
MAX_STEPS = 1000  # images of one interpolation (vaekit interpolate --steps)
MAX_SEED = 2**63 - 3  # the generators take 64-bit seeds, and a run seeds seed, seed + 1 and seed + 2
MAX_ZDIM = 65_536
MAX_WIDTH = 2**20  # hidden units or channels of one layer
# The likelihoods of 8-bit pixels whose decoder outputs each pixel's distribution (vaekit.heads): a discretized
# logistic with location and scale from z, and a mixture of them with coupled colour channels.
EIGHT_BIT_LIKELIHOODS = ("discretized-logistic", "logistic-mixture")
LIKELIHOODS = ("bernoulli", "gaussian", "continuous-bernoulli", *EIGHT_BIT_LIKELIHOODS)
# What a decoder outputs per sub-pixel: one logit ("logits", every other likelihood, and discretized-logistic runs
# stored before its scale depended on z), or the parameters of an 8-bit head.
HEADS = ("logits", *EIGHT_BIT_LIKELIHOODS)
# Components of the logistic mixture unless set (PixelCNN++ and VDVAE use 10), and the most accepted.
DEFAULT_MIXTURES = 10
MAX_MIXTURES = 256
# The scale of stored discretized-logistic runs of the "logits" head (one learned scale per pixel for every
# image) started at 1/16 of the pixel range; kept so such runs still rebuild and evaluate.
DISCRETIZED_LOGISTIC_SCALE = 1 / 16
DEVICES = ("auto", "cpu", "cuda", "mps")
OBJECTIVES = ("elbo", "iwae")
BINARIZE = ("none", "dynamic", "static")
# The splits of a finished run that the commands using it read (vaekit encode --split).
RUN_SPLITS = ("train", "test")
# File formats of vaekit encode --out, by extension (parquet with pyarrow installed).
ENCODING_FORMATS = ("npy", "csv", "parquet")
# Images per batch of the commands and Run methods that apply a trained model (--batch-size).
USE_BATCH_SIZE = 256
# Seed of the one binarized copy of the test set that every binarized evaluation uses (and, plus one, of
# the static training copy): fixed so that numbers of different runs are on the same test images.
BINARIZE_SEED = 20230802
# "auto": the fastest precision that keeps the numbers for the model and device (bf16 for conv models on CUDA
# with bf16 and on CPUs with native bf16, fp32 otherwise; see vaekit.training.precision.default_precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
SEEDS_TOGETHER = ("auto", "yes", "no")  # --seeds-together: stack the seeds' steps (vaekit.experiments.together)
GRID_SPACINGS = ("linear", "normal")
# The validation fraction of a run on your own images unless set: a named dataset has none unless asked for, so
# its runs keep the numbers they always had (their test set evaluated every epoch).
OWN_VAL_FRACTION = 0.1
# `vaekit sample`: where latents come from (the prior, or the mixture fitted to the training set's posterior
# means, vaekit.use.gmm), which image of p(x|z) is shown, and the mixture's components unless set.
SAMPLERS = ("prior", "gmm")
SAMPLE_MODES = ("mean", "sample")
DEFAULT_COMPONENTS = 10


@dataclass
class TrainConfig:
    """Training settings. The defaults are the blog post's: Adam, lr 3e-4, batch 128, 50 epochs, zdim 2."""

    dataset: str | None = None  # None: MNIST, falling back to the embedded subset when offline
    data_dir: str | None = None
    data: str | None = None  # your own images: a folder, or a .npy/.npz array file (instead of --dataset)
    image_size: int | None = None  # resize the shorter side to N and centre-crop N x N
    channels: int | None = None  # 1 or 3 (None: 1 when every image is grey, else 3)
    test_fraction: float = 0.1  # share of your own images held out for testing, unless train/ and test/ are given
    # Share of the training images held out for validation: the callbacks' metric to choose and stop on, so the
    # test set gives the final number only. None: OWN_VAL_FRACTION for your own images, 0 (none) for a named dataset.
    val_fraction: float | None = None
    skip_bad: bool = False  # leave unreadable images out (listed in the run folder) instead of stopping
    epochs: int = 50
    batch_size: int = 128
    lr: float = 3e-4
    zdim: int | None = None  # None: the preset's own latent size (2 for `seed`)
    model: str | None = None  # None: seed (the post's) for 28x28 grey images, else conv
    width: float = 1.0  # channel multiplier of the conv presets
    res_blocks: int | None = None  # residual blocks after each level of a conv preset (None: 0, or the recipe's)
    hidden: list[int] | None = None  # hidden sizes of the `mlp` preset (encoder order)
    activation: str | None = None
    likelihood: str = "bernoulli"
    sigma: float = 1.0  # fixed decoder standard deviation of the gaussian likelihood (the start when learned)
    learn_sigma: bool = False  # gaussian only: learn a per-pixel standard deviation
    mixtures: int | None = None  # logistic-mixture only: components per pixel (None: DEFAULT_MIXTURES)
    objective: str = "elbo"  # elbo or iwae (the importance-weighted bound)
    k: int = 1  # samples per image of the objective (elbo: averaged; iwae: the bound's k)
    beta: float = 1.0  # weight on the KL term (on log p(z) - log q(z|x) for iwae)
    kl_warmup: int = 0  # epochs over which the KL weight rises linearly from 0 to beta (0: none)
    binarize: str = "none"  # none (grey levels), dynamic (redrawn every batch) or static (one fixed copy)
    binarize_seed: int = BINARIZE_SEED  # seed of the test set's binarized copy (and of the static training copy)
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: only at epoch ends)
    eval_batch_size: int = 1000
    grid_size: int = 20
    grid_spacing: str = "linear"
    detect_anomaly: bool = False
    # How the step is computed (see docs/speed.md); the defaults are the post's fp32 eager step.
    # auto (below), fp32, bf16 (autocast; CPUs with AVX-512 BF16 or AMX, and CUDA) or fp16 (CUDA). auto is fp32
    # for the MLPs and bf16 for conv models where bf16 is native (see PRECISIONS).
    precision: str = "auto"
    compile: bool = False  # torch.compile the loss, falling back to eager where it cannot compile
    fused_step: bool = True  # the post's objective by the hand-written step (training/fused.py), same numbers
    cuda_graph: bool = True  # on CUDA in fp32, record the step once as a CUDA graph and replay it (training/graphs.py)
    lr_schedule: str = "constant"  # constant (the post's) or cosine (decays to 0 at the last step)
    lr_warmup: float = 0.0  # epochs of linear learning-rate warm-up before the schedule
    recipe: str | None = None  # the named recipe these settings came from (recorded only)
    # A training budget in optimizer steps: when set, epochs = ceil(steps / steps per epoch), decided once the
    # data is read, so a small folder trains as many steps as a large one (an explicit epochs clears it).
    steps: int | None = None
    # Stop once val_loss has not improved for this many epochs, and keep the best epoch's weights (0: never;
    # needs a validation split).
    patience: int = 0
    # The least optimizer steps that patience spans: a run whose epochs are a few steps waits more epochs, decided
    # with the step budget (0: patience is exactly its epochs; an explicit patience clears it).
    patience_steps: int = 0
    progress: bool = True
    artifacts: bool = True  # draw the figures and write the explorer and report at the end
    tensorboard: bool = False  # also log per-epoch scalars to RUN/tensorboard/ (needs the tensorboard package)
    # Experiment trackers (training/trackers.py): None for none, "" for the tracker's default URI / project.
    mlflow: str | None = None  # an MLflow tracking URI (needs the mlflow package)
    wandb: str | None = None  # a W&B project (needs the wandb package)
    strict_trackers: bool = False  # a failing tracker stops training instead of a warning
    # Stabilisers of deep hierarchies (VDVAE's): all off by default, so a run without them is unchanged.
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: no clipping)
    skip_threshold: float = 0.0  # skip an update whose gradient norm exceeds this (0: never skip)
    ema: float = 0.0  # rate of an exponential moving average of the weights used for evaluation (0: none)
    # Radius of the causal window of earlier pixels an 8-bit head also reads (ModelConfig.context; 0: none).
    context: int = 0

    def validate(self) -> None:
        _positive_int("epochs", self.epochs, MAX_EPOCHS)
        _positive_int("batch_size", self.batch_size, MAX_BATCH)
        _positive_int("eval_batch_size", self.eval_batch_size, MAX_BATCH)
        _positive_int("grid_size", self.grid_size, MAX_GRID)
        if self.zdim is not None:
            _positive_int("zdim", self.zdim, MAX_ZDIM)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and self.lr == self.lr and self.lr < float("inf")):
            raise ConfigError(f"lr must be a positive finite number (got {self.lr!r})")
        self._validate_data()
        self._validate_likelihood()
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        _positive_int("k", self.k, 100_000)
        if not (isinstance(self.beta, (int, float)) and 0 <= self.beta < float("inf")):
            raise ConfigError(f"beta must be a finite number >= 0 (got {self.beta!r})")
        if isinstance(self.kl_warmup, bool) or not isinstance(self.kl_warmup, int) or self.kl_warmup < 0:
            raise ConfigError(f"kl_warmup must be an integer number of epochs >= 0 (got {self.kl_warmup!r})")
        if self.binarize not in BINARIZE:
            raise ConfigError(f"unknown binarize mode {self.binarize!r}; choose one of {', '.join(BINARIZE)}")
        if isinstance(self.binarize_seed, bool) or not isinstance(self.binarize_seed, int) or self.binarize_seed < 0:
            raise ConfigError(f"binarize_seed must be an integer >= 0 (got {self.binarize_seed!r})")
        if self.device not in DEVICES and not self.device.startswith(("cuda:", "mps:")):
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)} or cuda:N")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be an integer >= 0 (got {self.checkpoint_every!r})")
        if self.grid_spacing not in GRID_SPACINGS:
            raise ConfigError(f"unknown grid_spacing {self.grid_spacing!r}; choose one of {', '.join(GRID_SPACINGS)}")
        if not _int_between(self.seed, 0, MAX_SEED):
            raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED} (got {_short(self.seed)})")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not (isinstance(self.lr_warmup, (int, float)) and 0 <= self.lr_warmup < float("inf")):
            raise ConfigError(f"lr_warmup must be a finite number of epochs >= 0 (got {self.lr_warmup!r})")
        if self.steps is not None:
            _positive_int("steps", self.steps, MAX_EPOCHS)
        if not _int_between(self.patience, 0, MAX_EPOCHS):
            raise ConfigError(f"patience must be an integer number of epochs >= 0 (got {_short(self.patience)})")
        if not _int_between(self.patience_steps, 0, MAX_EPOCHS):
            raise ConfigError(f"patience_steps must be an integer >= 0 (got {_short(self.patience_steps)})")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        self._validate_stabilisers()

    def _validate_stabilisers(self) -> None:
        """Clipping, skipping and the weight average: numbers in range, and not with a loss scaler, whose scaled
        gradients would be clipped and measured at the wrong scale."""
        for name in ("grad_clip", "skip_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"{name} must be a finite number >= 0, 0 for off (got {_short(value)})")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be a rate from 0 (off) up to, not including, 1 (got {_short(self.ema)})")
        if self.precision == "fp16" and (self.grad_clip or self.skip_threshold):
            flag = "--grad-clip" if self.grad_clip else "--skip-threshold"
            raise ConfigError(f"{flag} measures unscaled gradients; fp16's loss scaling scales them: use "
                              f"--precision bf16 or fp32")

    def _validate_likelihood(self) -> None:
        """The likelihood and the settings that belong to it; a setting it would ignore is refused, not dropped."""
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {self.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if not (self.sigma > 0 and self.sigma < float("inf")):
            raise ConfigError(f"sigma must be a positive finite number (got {self.sigma!r})")
        if self.mixtures is not None:
            if self.likelihood != "logistic-mixture":
                raise ConfigError(f"--mixtures sets the components of --likelihood logistic-mixture (got --likelihood "
                                  f"{self.likelihood}): drop --mixtures, or use --likelihood logistic-mixture")
            _positive_int("mixtures", self.mixtures, MAX_MIXTURES)
        # The 8-bit likelihoods model the 256 levels of 8-bit pixels: binarized pixels would get an "8-bit"
        # bits/dim that is not one.
        if self.likelihood in EIGHT_BIT_LIKELIHOODS and self.binarize != "none":
            raise ConfigError(f"--likelihood {self.likelihood} models 8-bit pixels, not the binary ones of "
                              f"--binarize {self.binarize}: drop --binarize, or use --likelihood bernoulli")
        self._validate_context()
        if self.likelihood != "gaussian" and (self.learn_sigma or self.sigma != 1.0):
            flag = "--learn-sigma" if self.learn_sigma else "--sigma"
            has = ("takes its scales from the decoder" if self.likelihood in EIGHT_BIT_LIKELIHOODS
                   else "has no sigma")
            raise ConfigError(f"{flag} sets the gaussian likelihood's sigma; --likelihood {self.likelihood} {has}: "
                              f"drop {flag}, or use --likelihood gaussian")

    def _validate_context(self) -> None:
        """The causal context's combinations, refused before any data is read (ModelConfig checks them again)."""
        _check_context(self.context)
        why = context_misfit(self.likelihood, PRESETS.get(str(self.model), {}).get("architecture"))
        if self.context and why:
            raise ConfigError(why)

    def _validate_data(self) -> None:
        if self.data is not None and (self.dataset is not None or self.data_dir is not None):
            raise ConfigError("--data trains on your own images; it cannot be combined with --dataset or --data-dir")
        if self.image_size is not None:
            _positive_int("image_size", self.image_size, 2**15)
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in CHANNELS):
            raise ConfigError(f"channels must be 1 or 3 (got {self.channels!r})")
        f = self.test_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ConfigError(f"test_fraction must be a number between 0 and 1 (got {f!r})")
        v = self.val_fraction
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
            raise ConfigError(f"val_fraction must be a number from 0 (no validation split) up to 1 (got {_short(v)})")
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not 0 < self.width <= 64:
            raise ConfigError(f"width must be a positive number up to 64 (got {self.width!r})")
        if self.model is not None and self.model not in PRESETS:
            raise ConfigError(f"unknown model preset {self.model!r}; choose one of {', '.join(PRESETS)}")
        if self.res_blocks is not None and not _int_between(self.res_blocks, RES_BLOCKS[0], RES_BLOCKS[-1]):
            raise ConfigError(f"res_blocks must be one of {_listed(RES_BLOCKS)} (got {_short(self.res_blocks)})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A stored run's settings. Runs trained before a likelihood other than the gaussian refused ``sigma``
        and ``learn_sigma`` may record them; it never used them, so they load as unset."""
        cfg = cls(**_known(cls, d))
        if cfg.likelihood != "gaussian":
            cfg.sigma, cfg.learn_sigma = TrainConfig.sigma, TrainConfig.learn_sigma
        return cfg


def _positive_int(name: str, value: Any, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (most is not None and value > most):
        bound = f" up to {most:,}" if most is not None else ""
        raise ConfigError(f"{name} must be a positive integer{bound} (got {_short(value)})")


def context_misfit(likelihood: Any, architecture: Any) -> str | None:
    """Why a causal context does not fit this likelihood and architecture (None: it does). The context reads the
    earlier pixels' 8-bit values, which only an 8-bit likelihood models, and sits on a flat model's head."""
    if likelihood not in EIGHT_BIT_LIKELIHOODS:
        return (f"--context reads the earlier 8-bit pixels; --likelihood {likelihood} has none: use --likelihood "
                f"{' or '.join(EIGHT_BIT_LIKELIHOODS)}, or drop --context")
    if architecture == "hierarchical":
        return ("--context is for the flat models (conv, MLP presets), not the hierarchical one: drop --context, "
                "or choose another --model")
    return None


def _check_context(value: Any) -> None:
    if isinstance(value, bool) or value not in CONTEXTS:
        raise ConfigError(f"context must be one of {', '.join(map(str, CONTEXTS))} (got {_short(value)})")


def _short(value: Any) -> str:
    """``repr`` of a value, cut short: a config may hold a number of thousands of digits."""
    if isinstance(value, int) and value.bit_length() >= 200:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _listed(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values))


def _int_between(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keep only the fields ``cls`` knows, so configs written by newer versions still load."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# Named recipes: sets of training settings chosen for a purpose, with the user's own flags on top.
# ``post`` is the blog post's recipe (every default). ``fast`` reaches the test loss of the post's 50 epochs
# in a fraction of the wall time on the same data (``benchmarks/time_to_quality.py`` measures it; the numbers,
# with their machine and date, are in benchmarks/RESULTS.md, "Time to quality"):
#
# * a learning rate 17 times the post's (5e-3) with a linear warm-up over the first epoch, so the first steps
#   at that rate do not blow up the young network, and a cosine decay to zero at the last step, whose final
#   low-rate steps settle the weights the way many more epochs at a constant rate would: 16 epochs matched the
#   post's 50 on Fashion-MNIST;
# * batch 256, twice the post's: fewer, larger matrix products, so less fixed cost per image, at a sample
#   efficiency still close to batch 128's (batch 512 needed more epochs than it saved);
# * bf16 matrix products where the hardware computes them natively (CUDA, CPUs with AVX-512 BF16 or AMX),
#   faster than fp32 at this batch on such a CPU; elsewhere it trains in fp32, with a warning.
#
# The epochs are part of the recipe: the schedule decays over exactly that many.
#
# ``images`` is the best vaekit has for 8-bit images at a small machine's scale (the default of ``--data`` and of
# CIFAR-10; docs/models.md, "The images recipe"):
#
# * the ``conv`` preset and a mixture of 5 discretized logistics whose weights, locations and scales the decoder
#   outputs for every pixel: a density of the 256 levels of each pixel, so the test loss and the
#   importance-sampled NLL are -log P of the 8-bit pixels and bits/dim compare with codecs and papers (the
#   post's bernoulli of grey levels is not a probability of the image). On Fashion-MNIST it reached 3.38
#   bits/dim where the single discretized logistic reached 3.55 in the same 3,000 steps (benchmarks/RESULTS.md);
# * Adam at lr 1e-3 (the rate the conv rows of benchmarks/paper_table.py train at) with half an epoch of warm-up
#   and a cosine decay to 0, batch 64: twice the post's steps per epoch, which small folders need;
# * a budget in steps, not epochs: 3,000 optimizer steps whatever the folder's size (2,000 training images
#   get 94 epochs, Fashion-MNIST's 54,000 get 4), ``--epochs`` overriding;
# * 10% of the training images for validation, early stopping after 10 epochs without a better val_loss, or
#   500 steps where 10 epochs are fewer (a folder of 300 images: 125 epochs of 4 noisy steps, where 10 stopped it
#   1.25 bits/dim short of its best), and the best epoch's weights kept;
# * a causal context of radius 2 (model/context.py): each pixel's distribution also reads the 12 pixels before it
#   in a 5x5 window, which a decoder independent per pixel given z cannot, and which PNG and WebP live on. On the
#   32x32 photo crops of benchmarks/codec_table.py it took the recipe from 4.86 to 3.60 bits/dim in 30 minutes
#   (PNG 4.05), and to 3.28 after its 3,000 steps (WebP lossless 3.35; benchmarks/RESULTS.md, 2026-12-03),
#   at the price of a latent that carries far less
#   (--context 0 for a latent that describes the image: reconstructions, the explorer).
# A weight average (--ema 0.995) did not pay on a small folder or on Fashion-MNIST (docs/results-images.md), nor
# did residual blocks (--res-blocks 1) at their cost: IMAGES_EMA is the average's place once one does.
IMAGES_EMA: dict[str, Any] = {}
RECIPES: dict[str, dict[str, Any]] = {
    "post": {},
    "fast": {
        "batch_size": 256,
        "lr": 5e-3,
        "lr_schedule": "cosine",
        "lr_warmup": 1.0,
        "epochs": 16,
        "precision": "bf16",
    },
    "images": {
        "model": "conv",
        "likelihood": "logistic-mixture",
        "mixtures": 5,
        "batch_size": 64,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "lr_warmup": 0.5,
        "steps": 3000,
        "val_fraction": 0.1,
        "patience": 10,
        "patience_steps": 500,

        "context": 2,
        **IMAGES_EMA,
    },
}
# Named datasets of 8-bit images that train with the images recipe unless another is asked for; MNIST,
# Fashion-MNIST and KMNIST keep the post's settings, which their golden runs and the post's numbers rely on.
IMAGES_RECIPE_DATASETS = ("cifar10",)


def default_recipe(given: dict[str, Any]) -> str | None:
    """The recipe of a command line that names none: ``images`` for your own images and CIFAR-10, else the post's."""
    if given.get("data") is not None or given.get("dataset") in IMAGES_RECIPE_DATASETS:
        return "images"
    return None


def recipe_config(name: str | None, given: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of recipe ``name`` (None: the defaults), with the fields in ``given`` set on top.

    An explicit ``epochs`` replaces a recipe's step budget (``steps``), so the run trains exactly that many;
    turning the validation split off (``val_fraction`` 0) turns off the recipe's early stopping, which needs it;
    another ``likelihood`` drops the recipe's ``mixtures``, which only the logistic mixture has, and a likelihood
    that is not 8-bit or the hierarchical model its ``context``.
    """
    given = dict(given or {})
    if name is None:
        return TrainConfig(**given)
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    settings = {**RECIPES[name], **given, "recipe": name}
    if settings.get("likelihood") != "logistic-mixture" and "mixtures" not in given:
        settings.pop("mixtures", None)  # the recipe's mixture size goes with its likelihood, not with another
    if "context" not in given and context_misfit(settings.get("likelihood"),
                                                 PRESETS.get(str(settings.get("model")), {}).get("architecture")):
        settings.pop("context", None)  # so does its causal context, which only a flat model's 8-bit head has
    if "epochs" in given:
        settings["steps"] = None
    if "patience" in given:  # the patience asked for, in epochs, whatever their length
        settings["patience_steps"] = 0
    if given.get("val_fraction") == 0 and "patience" not in given:  # early stopping goes with its validation split
        settings["patience"] = 0
    return TrainConfig(**settings)


def epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps on ``n_train`` images (the last batch may be short)."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(1, math.ceil(steps / per_epoch))
