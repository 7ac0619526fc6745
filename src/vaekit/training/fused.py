"""The post's training step written out by hand: forward, loss and backward without the autograd engine.

Why: at the post's settings (batch 128, a 440k-parameter MLP) a CPU step spends about as long around its
matrix products as in them: 150 operations dispatched one by one (520 operator calls, counting nested ones)
and 56 autograd graph nodes built and walked, with transposed views and casts between them. Written out,
the step makes 99 calls and builds no graph. The products cannot go faster, but the rest can.
This module computes the same quantity, with the same ATen kernels in the same order and on the same
operands, so the loss and every gradient are bit for bit those of ``loss.backward()`` on
:func:`~vaekit.training.objective.batch_loss` (``tests/test_fused_step.py`` checks it, and the golden
runs check whole trainings): what is saved is the engine's bookkeeping, not arithmetic.

It covers the post's objective: an MLP VAE, the single-draw ELBO with the closed-form KL, the Bernoulli
likelihood, float32, one process. Everything else goes through autograd (:func:`vaekit.training.plan.choose_plan`
decides, and says why). The loss calls :mod:`vaekit.objectives`' definitions of the Bernoulli term and the
KL; their gradients are written out here (:func:`bernoulli_backward`, :func:`gaussian_kl_backward`) and tested
against autograd on those definitions.

The method, with ``a`` a layer's pre-activation, ``h`` its output and ``g`` the gradient flowing back:

    forward:  a_l = h_{l-1} W_l^T + b_l,  h_l = act(a_l)
    backward: g <- act'(a_l) * g,  dW_l = g^T h_{l-1},  db_l = sum_rows(g),  g <- g W_l
    loss:     sum_i [ BCE(logits_i, x_i) + beta * KL_i ],  dloss/dlogits = sigmoid(logits) - x
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.data.binarize import binarize_with
from vaekit.data.tensors import to_unit
from vaekit.model import VAE
from vaekit.objectives import bernoulli_cross_entropy, gaussian_kl
from vaekit.training.objective import Noise

_aten = torch.ops.aten

# Each activation's forward and the backward autograd runs for it, given (grad, pre-activation, output):
# the same kernel with the same arguments, so the gradients match bit for bit.
_ACT: dict[type[nn.Module], Callable[[nn.Module], tuple[Callable[[Tensor], Tensor],
                                                        Callable[[Tensor, Tensor, Tensor], Tensor]]]] = {
    nn.ELU: lambda m: (lambda a: F.elu(a, m.alpha),
                       lambda g, a, h: _aten.elu_backward(g, m.alpha, 1, 1, False, a)),
    nn.ReLU: lambda m: (F.relu, lambda g, a, h: _aten.threshold_backward(g, h, 0)),
    nn.Tanh: lambda m: (torch.tanh, lambda g, a, h: _aten.tanh_backward(g, h)),
    nn.GELU: lambda m: (lambda a: F.gelu(a, approximate=m.approximate),
                        lambda g, a, h: _aten.gelu_backward(g, a, approximate=m.approximate)),
    nn.SiLU: lambda m: (F.silu, lambda g, a, h: _aten.silu_backward(g, a)),
    nn.LeakyReLU: lambda m: (lambda a: F.leaky_relu(a, m.negative_slope),
                             lambda g, a, h: _aten.leaky_relu_backward(g, a, m.negative_slope, False)),
}


@dataclass
class Layer:
    """One Linear layer and the activation after it (None for none), with its backward."""

    linear: nn.Linear
    act: Callable[[Tensor], Tensor] | None
    act_backward: Callable[[Tensor, Tensor, Tensor], Tensor] | None


def layers_of(body: nn.Sequential) -> list[Layer] | None:
    """``body``'s Linear layers with their activations, or None when it holds anything else."""
    mods, out = list(body), []
    for i, m in enumerate(mods):
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, nn.Linear):
            act = _ACT[type(nxt)](nxt) if type(nxt) in _ACT else (None, None)
            out.append(Layer(m, *act))
        elif type(m) not in _ACT or not isinstance(mods[i - 1] if i else None, nn.Linear):
            return None
    return out


def model_blocker(model: VAE) -> str | None:
    """Why the hand-written step cannot compute ``model``'s gradients, or None when it can.

    It knows an MLP whose layers are Linear and a supported activation, with no learned likelihood
    parameter; the rest of what it needs (the objective, the precision, one process) is the run's settings,
    which :func:`vaekit.training.plan.choose_plan` checks.
    """
    if model.config.architecture != "mlp":
        return f"the {model.config.architecture} model has no hand-written step (MLP only)"
    if model.log_sigma is not None:
        return "a learned likelihood scale has no hand-written step"
    if layers_of(model.encoder) is None or layers_of(model.decoder) is None:
        return "the MLP has a layer the hand-written step does not know"
    return None


def bernoulli_backward(logits: Tensor, x: Tensor) -> Tensor:
    """d/d logits of :func:`~vaekit.objectives.bernoulli_cross_entropy`: sigmoid(logits) - x (the kernels
    ``BinaryCrossEntropyWithLogitsBackward`` runs for a sum's gradient of ones)."""
    return torch.sigmoid(logits) - x


def gaussian_kl_backward(mu: Tensor, logvar: Tensor, kl_weight: float | Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of ``kl_weight * gaussian_kl(mu, logvar)`` (summed over rows) for ``mu`` and ``logvar``.

    d KL / d mu = mu and d KL / d logvar = (exp(logvar) - 1) / 2, computed as autograd computes them through
    :func:`~vaekit.objectives.gaussian_kl`'s operations: the sum passes -kl_weight / 2 to each term, the
    square's backward doubles mu, the exponential's reuses exp(logvar).
    """
    # kl_weight is a number, or a device scalar inside a recorded CUDA graph (where fill_ would read it back)
    w = kl_weight.expand_as(mu) if isinstance(kl_weight, Tensor) else torch.full_like(mu, kl_weight)
    g_inner = w * -0.5
    return -g_inner * (2 * mu), g_inner + -g_inner * logvar.exp()


def mlp_forward(layers: list[Layer], h: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The output, each layer's input and each layer's pre-activation (as F.linear computes it)."""
    inputs, pre = [], []
    for layer in layers:
        inputs.append(h)
        a = torch.addmm(layer.linear.bias, h, layer.linear.weight.t())
        pre.append(a)
        h = layer.act(a) if layer.act is not None else a
    return h, inputs, pre


def mlp_backward(layers: list[Layer], inputs: list[Tensor], pre: list[Tensor], outputs: list[Tensor], g: Tensor,
                 input_grad: bool) -> Tensor | None:
    """Set every layer's weight and bias gradient from ``g``, the gradient of the output; returns the input's
    gradient when ``input_grad`` (the products autograd's AddmmBackward makes for a Linear's operands)."""
    for i in reversed(range(len(layers))):
        layer = layers[i]
        if layer.act_backward is not None:
            g = layer.act_backward(g, pre[i], outputs[i])
        layer.linear.weight.grad = torch.mm(g.t(), inputs[i])
        layer.linear.bias.grad = g.sum(0)
        if i == 0 and not input_grad:
            return None
        g = g.mm(layer.linear.weight)
    return g


class FusedLoss:
    """``loss(x, noise, kl_weight)``: the post's summed negative ELBO, with every parameter's ``.grad`` set."""

    def __init__(self, model: VAE) -> None:
        enc, dec = layers_of(model.encoder), layers_of(model.decoder)
        assert enc is not None and dec is not None, "model_blocker() is checked before building the step"
        self.enc, self.dec, self.zdim = enc, dec, model.zdim

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float | Tensor) -> Tensor:
        x = to_unit(x)
        if noise.uniforms is not None:
            x = binarize_with(x, noise.uniforms)
        with torch.no_grad():
            return self._forward_backward(x, noise.eps, kl_weight)

    def _forward_backward(self, x: Tensor, eps: Tensor, kl_weight: float | Tensor) -> Tensor:
        out, enc_in, enc_pre = mlp_forward(self.enc, x)
        mu, logvar = torch.split(out, self.zdim, dim=-1)
        std = torch.exp(0.5 * logvar)
        z = mu + std * eps
        logits, dec_in, dec_pre = mlp_forward(self.dec, z)
        recon = bernoulli_cross_entropy(x, logits)
        kl = gaussian_kl(mu, logvar)
        loss = (recon + kl_weight * kl).sum()
        # Backward: d loss / d recon_i = 1 and d loss / d kl_i = kl_weight.
        g_z = mlp_backward(self.dec, dec_in, dec_pre, [*dec_in[1:], logits], bernoulli_backward(logits, x), True)
        kl_mu, kl_logvar = gaussian_kl_backward(mu, logvar, kl_weight)
        g_mu = g_z + kl_mu
        g_logvar = kl_logvar + (g_z * eps * std) * 0.5
        mlp_backward(self.enc, enc_in, enc_pre, [*enc_in[1:], out], torch.cat([g_mu, g_logvar], dim=-1), False)
        return loss
