"""The VAE: an encoder q(z|x) and decoder p(x|z) over flattened images, MLP or convolutional.

The encoder maps a flattened image ``x`` to the mean ``mu`` and log-variance ``logvar`` of the Gaussian
posterior q(z|x); the decoder maps a latent ``z`` to per-pixel *logits*. Likelihoods work on logits
(``binary_cross_entropy_with_logits``) because ``sigmoid`` followed by ``log`` underflows for confident
pixels, which is where the blog's ``Sigmoid`` + ``BCE`` pair clamps its log at -100. With an 8-bit likelihood
head (``ModelConfig.head``) the decoder outputs each pixel's distribution instead (:mod:`vaekit.heads`), and
:meth:`VAE.mean_image` gives the image to show for either.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vaekit.config import ModelConfig
from vaekit.heads import head_mean, head_sample, init_head_bias, params_per_pixel
from vaekit.model.context import CausalContext
from vaekit.model.conv import conv_decoder, conv_encoder
from vaekit.model.hierarchical import BottomUp, LatentPass, TopDown, hierarchy_groups
from vaekit.objectives import log_likelihood

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}

# The 8-bit heads' output layer starts with a tenth of its default weights (see VAE._init_head).
HEAD_INIT_WEIGHT = 0.1


def _mlp(sizes: list[int], activation: str, skip_first: bool = False) -> nn.Sequential:
    """Linear layers through ``sizes`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        last = i == len(sizes) - 2
        if not last and not (skip_first and i == 0):
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """A VAE with diagonal Gaussian posterior, standard normal prior and a logits-valued decoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.zdim = config.zdim
        self.hierarchical = config.architecture == "hierarchical"
        d = config.input_dim
        self.channels = config.image_shape[2] if len(config.image_shape) == 3 else 1
        # Decoder outputs per pixel: one logit per channel, or an 8-bit head's parameters (vaekit.heads).
        self.params_per_pixel = params_per_pixel(config.head, self.channels, config.mixtures)
        out = d // self.channels * self.params_per_pixel
        if self.hierarchical:
            self._build_hierarchy(config)
        elif config.architecture == "conv":
            h, w, *c = config.image_shape
            shape, act = (h, w, c[0] if c else 1), _ACTIVATIONS[config.activation]
            self.encoder = conv_encoder(shape, config.encoder_hidden, config.zdim, act, config.res_blocks)
            self.decoder = conv_decoder(shape, config.encoder_hidden, config.zdim, act, config.upsample,
                                        self.params_per_pixel, config.res_blocks)
        else:
            self.encoder = _mlp([d, *config.encoder_hidden, 2 * config.zdim], config.activation)
            self.decoder = _mlp(
                [config.zdim, *config.decoder_hidden, out], config.activation, config.skip_first_decoder_activation
            )
        self._init_head()
        # The causal context of an 8-bit head (model/context.py); None (and absent from the state dict) without.
        self.context: CausalContext | None = None
        if config.context:
            h, w = config.image_shape[:2]
            self.context = CausalContext((h, w, self.channels), self.params_per_pixel, config.context,
                                         _ACTIVATIONS[config.activation])
        # The learned per-pixel log standard deviation of a gaussian p(x|z); None (and absent from the
        # state dict) otherwise, so models without it keep their exact weights file.
        self.log_sigma: nn.Parameter | None
        if config.learn_sigma:
            self.log_sigma = nn.Parameter(torch.full((d,), math.log(config.sigma_init)))
        else:
            self.register_parameter("log_sigma", None)

    @property
    def latent_size(self) -> int:
        """Standard normals one pass draws per image: ``zdim`` for a flat model, every group's for a hierarchy."""
        return self._latent_size if self.hierarchical else self.zdim

    def _build_hierarchy(self, config: ModelConfig) -> None:
        """The bottom-up encoder and top-down decoder of :mod:`vaekit.model.hierarchical`; ``zdim`` becomes the
        first (coarsest) group's size, the latent that ``encode`` and ``decode`` speak of."""
        h, w, *c = config.image_shape
        shape, act = (h, w, c[0] if c else 1), _ACTIVATIONS[config.activation]
        groups = hierarchy_groups(config.image_shape, config.encoder_hidden, config.latent_groups, config.zdim)
        self.encoder = BottomUp(shape, config.encoder_hidden, act)
        self.decoder = TopDown(shape, config.encoder_hidden, groups, config.zdim, act,
                               self.params_per_pixel)
        self.zdim, self._latent_size = groups[0].dim, sum(g.dim for g in groups)

    def latent_pass(self, x: Tensor, eps: Tensor) -> LatentPass:
        """A hierarchy's pass through every latent group with the standard normals ``eps`` (batch, latent_size)
        or (k, batch, latent_size): logits, the groups' analytic KL given their sampled parents, log q(z|x) and
        log p(z), with the leading dimensions of ``eps``. The bottom-up pass runs once for the k draws."""
        rows = x.reshape(-1, x.shape[-1])
        acts = self.encoder(rows)
        lead = eps.shape[:-1]
        k = eps[..., 0].numel() // rows.shape[0]
        if k > 1:
            acts = [a.unsqueeze(0).expand(k, *a.shape).reshape(-1, *a.shape[1:]) for a in acts]
        p = self.decoder(acts[0].shape[0], acts, eps.reshape(-1, eps.shape[-1]))
        return LatentPass(p.logits.reshape(*lead, -1), p.kl.reshape(lead), p.log_q.reshape(lead),
                          p.log_p.reshape(lead))

    def _init_head(self) -> None:
        """Start an 8-bit head near the uniform code: its outputs' biases from :func:`init_head_bias`, and the
        last layer's weights a tenth of their default so that z moves the start only a little. A model laid out
        on the meta device (load_model's size check) has no values to start: building the bias there would load
        torch's compiler, seconds for nothing."""
        last = [m for m in self.decoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        if last.weight.is_meta:
            return
        bias = init_head_bias(self.config.head, self.channels, self.config.mixtures)
        if bias is None:
            return
        with torch.no_grad():
            last.weight.mul_(HEAD_INIT_WEIGHT)
            last.bias.copy_(bias.repeat(last.bias.numel() // bias.numel()))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)`` for flattened images ``x`` in [0, 1] (of a hierarchy: of its
        first group, q(z_1|x))."""
        if self.hierarchical:
            rows = x.reshape(-1, x.shape[-1])
            mu, logvar = self.decoder.first_posterior(self.encoder(rows))
            return mu.reshape(*x.shape[:-1], -1), logvar.reshape(*x.shape[:-1], -1)
        mu, logvar = torch.split(self._batched(self.encoder, x), self.zdim, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """The parameters of p(x|z) as rows of ``params_per_pixel`` values per pixel: one logit per channel,
        or an 8-bit head's parameters (:mod:`vaekit.heads`); :meth:`mean_image` turns them into pixels. For a
        hierarchy ``z`` is the first group's and every later group is at its prior mean (temperature 0)."""
        if self.hierarchical:
            top = z.reshape(-1, z.shape[-1])
            return self.decoder(top.shape[0], None, None, top).logits.reshape(*z.shape[:-1], -1)
        return self._batched(self.decoder, z)

    def log_px_z(self, likelihood: str, x: Tensor, params: Tensor, sigma: float = 1.0) -> Tensor:
        """log p(x|z) per row of decoder outputs ``params`` under ``likelihood``, read with this model's own head,
        learned scales and channels, so no caller has to pass them along."""
        return log_likelihood(likelihood, x, self.head_params(x, params), sigma, self.log_sigma, self.channels,
                              self.config.mixtures)

    def head_params(self, x: Tensor, params: Tensor) -> Tensor:
        """The parameters of p(x|z) for the image ``x``: the decoder's ``params`` themselves, or with a causal
        context (:mod:`vaekit.model.context`) those plus what each pixel reads from the pixels of ``x`` before it."""
        return params if self.context is None else self.context(x, params)

    def mean_image(self, params: Tensor) -> Tensor:
        """The image of decoder outputs ``params`` (rows of H*W*C values in [0, 1]): sigmoid of logits, or the
        head's mean (:func:`vaekit.heads.head_mean`), so no caller interprets the outputs itself. With a causal
        context the image is made pixel by pixel, each pixel the head's mean given the means before it."""
        return self._per_pixel(lambda p: head_mean(self.config.head, p, self.channels, self.config.mixtures), params)

    def sample_images(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """8-bit images drawn from the head's p(x|z) for decoder outputs ``params`` (8-bit heads only); with a causal
        context pixel by pixel in raster order, each drawn given the ones drawn before it."""
        return self._per_pixel(lambda p: head_sample(self.config.head, p, self.channels, self.config.mixtures,
                                                     generator), params)

    def _per_pixel(self, pixel: Callable[[Tensor], Tensor], params: Tensor) -> Tensor:
        """``pixel`` (head parameters -> pixel values) over the image: at once, or with a causal context pixel by
        pixel in raster order, each pixel's parameters read from the values made before it."""
        return pixel(params) if self.context is None else self.context.generate(params, pixel)

    def _batched(self, body: nn.Module, rows: Tensor) -> Tensor:
        """``body(rows)`` for rows with any leading dimensions (k draws of a batch): convolutions take one."""
        if rows.dim() <= 2 or self.config.architecture != "conv":
            return body(rows)
        return body(rows.reshape(-1, rows.shape[-1])).reshape(*rows.shape[:-1], -1)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        """z = mu + sigma * eps: sampling moved into ``eps`` so gradients flow to mu and sigma."""
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One reparametrized pass with the standard normal draws ``eps`` (shape of ``mu``): ``(logits, mu, logvar)``.

        The noise is an input, drawn by the caller from its own generator, so the pass is a pure function
        that data parallelism and ``torch.compile`` can treat like any other. A hierarchy's pass is
        :meth:`latent_pass`: its KL is not that of ``(mu, logvar)`` against N(0, I).
        """
        if self.hierarchical:
            raise TypeError("a hierarchical VAE's pass is latent_pass(x, eps), with the KL of every group")
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, eps)), mu, logvar


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
