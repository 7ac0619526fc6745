"""Named model presets, and the resolution of a preset plus the user's overrides into a ModelConfig."""

from __future__ import annotations

from vaekit.config import PRESETS, ConfigError, ModelConfig
from vaekit.model.conv import conv_levels


def model_config(
    preset: str,
    zdim: int | None = None,
    hidden: list[int] | None = None,
    activation: str | None = None,
    image_shape: tuple[int, ...] = (28, 28),
    learn_sigma: bool = False,
    sigma_init: float = 1.0,
    width: float = 1.0,
    head: str = "logits",
    mixtures: int = 0,
    res_blocks: int = 0,

    context: int = 0,
) -> ModelConfig:
    """Resolve a preset name and optional overrides into a validated :class:`ModelConfig`.

    ``learn_sigma`` adds a per-pixel decoder log standard deviation starting at ``log(sigma_init)``. For
    the ``conv`` preset the number of levels follows the image size (down to about 4 x 4) and ``width``
    multiplies the channels of a conv preset. ``head`` is what the decoder outputs per sub-pixel (one of
    ``HEADS``: logits, or an 8-bit likelihood's parameters), ``mixtures`` the logistic mixture's components.
    ``res_blocks`` residual blocks follow each level of a conv preset; any other preset refuses them.
    ``context`` the radius of an 8-bit head's causal window of earlier pixels (0: none; :mod:`vaekit.model.context`).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    spec = dict(PRESETS[preset])
    if hidden is not None:
        if preset == "seed":
            raise ConfigError("the seed preset has fixed hidden sizes; use --model mlp --hidden ...")
        spec["encoder_hidden"] = list(hidden)
        spec["decoder_hidden"] = list(reversed(hidden))
    if activation is not None:
        spec["activation"] = activation
    if zdim is not None:
        spec["zdim"] = zdim
    if spec.get("architecture") == "conv":
        channels = spec["encoder_hidden"]
        if preset == "conv" and hidden is None:
            channels = channels[: conv_levels(image_shape[0], image_shape[1], len(channels))]
        channels = [max(1, round(ch * width)) for ch in channels]
        spec["encoder_hidden"], spec["decoder_hidden"] = channels, channels[::-1]
    if spec.get("architecture") == "hierarchical":
        levels = len(spec["encoder_hidden"])  # --hidden may change the levels: groups kept coarsest first
        spec["latent_groups"] = (list(spec["latent_groups"]) + [0] * levels)[:levels]
        spec["encoder_hidden"] = [max(1, round(ch * width)) for ch in spec["encoder_hidden"]]
        spec["decoder_hidden"] = spec["encoder_hidden"][::-1]
    cfg = ModelConfig(preset=preset, image_shape=tuple(image_shape), learn_sigma=learn_sigma,
                      sigma_init=float(sigma_init) if learn_sigma else 1.0, head=head,
                      mixtures=mixtures, res_blocks=res_blocks, context=context, **spec)
    cfg.validate()
    return cfg
