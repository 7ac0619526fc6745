"""The 8-bit likelihood heads: normalization, the mixture against a float64 reference, the floor, the start,
the mean and samples, and the heads through training, resuming, evaluation and stored runs of the older
per-pixel-global scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from vaekit import heads
from vaekit import run as runs
from vaekit.cli import main
from vaekit.config import ConfigError, TrainConfig
from vaekit.data.embedded import load_embedded
from vaekit.model import VAE, model_config
from vaekit.objectives import log_likelihood

from .artifact_runs import make_run

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def _params(n_pixels: int, per_pixel: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """Random head parameters for ``n_pixels`` pixels, float64, moderate so every level has visible mass."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_pixels * per_pixel, generator=g, dtype=torch.float64) * spread).reshape(1, -1)


def test_params_per_pixel() -> None:
    assert heads.params_per_pixel("bernoulli", 3, 10) == 3
    assert heads.params_per_pixel("discretized-logistic", 3, 10) == 6
    assert heads.params_per_pixel("logistic-mixture", 3, 10) == 100  # PixelCNN++'s 10 x 10 for RGB
    assert heads.params_per_pixel("logistic-mixture", 1, 10) == 30


# ---------------------------------------------------------------------------------------------- normalization


@pytest.mark.parametrize("channels", [1, 3])
def test_discretized_logistic_sums_to_one_over_the_256_levels_of_each_channel(channels: int) -> None:
    params = _params(1, 2 * channels, seed=channels) * 0.5
    params[0, channels:] -= 2.5  # scales around a tenth of the range: the tails and the middle both matter
    x = LEVELS.repeat_interleave(channels).reshape(256, channels)
    for c in range(channels):
        rows = torch.full((256, channels), 0.5, dtype=torch.float64)
        rows[:, c] = x[:, c]
        per_value = heads.log_bin_mass(rows, torch.sigmoid(params[0, :channels]), params[0, channels:])[:, c]
        assert float(per_value.exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_grey_mixture_sums_to_one_over_the_256_levels() -> None:
    params = _params(1, 3 * 4, seed=1).expand(256, -1)
    logp = heads.mixture_log_prob(LEVELS.reshape(256, 1), params, channels=1, mixtures=4)
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-12)


def _component_masses(params: torch.Tensor, k: int, r: int, g: int | None = None) -> float:
    """P(r) (or P(r, g) given ``g``) of the mixture from the reference's per-channel masses:
    sum_k pi_k P_k(r) P_k(g | r)."""
    comps = _unpack(params[0].tolist(), k, 3)
    norm = sum(math.exp(cm[0]) for cm in comps)
    total = 0.0
    for logit, m, s, (a, _, _) in comps:
        p = math.exp(logit) / norm * _mass(r / 255, m[0], s[0])
        if g is not None:
            p *= _mass(g / 255, m[1] + math.tanh(a) * r / 255, s[1])
        total += p
    return total


def test_colour_mixture_sums_to_one_over_each_channel_given_the_earlier_ones() -> None:
    """Summing the blue levels out leaves P(r, g), summing green and blue out leaves P(r), which sum to 1: the
    coupling conditions each channel on the earlier channels' values and keeps every conditional normalized."""
    k = 3
    params = _params(1, heads.params_per_pixel("logistic-mixture", 3, k), seed=2)
    gb = torch.cartesian_prod(LEVELS, LEVELS)
    for r, g in [(0, 255), (17, 130), (255, 0), (128, 128)]:
        x = torch.stack([torch.full((256,), r / 255, dtype=torch.float64),
                         torch.full((256,), g / 255, dtype=torch.float64), LEVELS], dim=1)
        joint = heads.mixture_log_prob(x, params.expand(256, -1), channels=3, mixtures=k).exp().sum()
        assert float(joint) == pytest.approx(_component_masses(params, k, r, g), rel=1e-10)
    for r in (0, 77, 255):
        x = torch.cat([torch.full((len(gb), 1), r / 255, dtype=torch.float64), gb], dim=1)
        marginal = heads.mixture_log_prob(x, params.expand(len(gb), -1), channels=3, mixtures=k).exp().sum()
        assert float(marginal) == pytest.approx(_component_masses(params, k, r), rel=1e-10)
    assert sum(_component_masses(params, k, r) for r in range(256)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.slow
def test_colour_mixture_sums_to_one_over_all_256_cubed_colours() -> None:
    """Exhaustively: the 256^3 colours of one pixel, a red level at a time (about a minute on one core)."""
    k = 2
    params = _params(1, heads.params_per_pixel("logistic-mixture", 3, k), seed=2)
    gb = torch.cartesian_prod(LEVELS, LEVELS)
    total = 0.0
    for r in LEVELS:
        x = torch.cat([r.expand(len(gb), 1), gb], dim=1)
        total += float(heads.mixture_log_prob(x, params.expand(len(gb), -1), channels=3, mixtures=k).exp().sum())
    assert total == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------- float64 reference


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def _mass(x: float, mean: float, log_scale: float) -> float:
    """The discretized logistic's mass of level x, written out: CDF differences, tails at the end levels."""
    s = math.exp(max(log_scale, -7.0))
    upper = 1.0 if x > 1 - 1 / 510 else _sigmoid((x + 1 / 510 - mean) / s)
    lower = 0.0 if x < 1 / 510 else _sigmoid((x - 1 / 510 - mean) / s)
    return upper - lower


def _unpack(p: list[float], k: int, c: int) -> list[tuple]:
    """One pixel's parameters -> per component (logit, means, log-scales, coefficients), by the documented layout."""
    nc = c * (c - 1) // 2
    out = []
    for j in range(k):
        means = p[k + j * c : k + (j + 1) * c]
        scales = p[k + k * c + j * c : k + k * c + (j + 1) * c]
        coeffs = p[k + 2 * k * c + j * nc : k + 2 * k * c + (j + 1) * nc] + [0.0] * (3 - nc)
        out.append((p[j], means + [0.0] * (3 - c), scales + [0.0] * (3 - c), coeffs))
    return out


def _reference_mixture(x: list[float], params: list[float], k: int, c: int) -> float:
    """log P(x) of one image by loops in float64: PixelCNN++'s mixture with the linear colour coupling."""
    per = k * (1 + 2 * c + c * (c - 1) // 2)
    total = 0.0
    for pix in range(len(x) // c):
        comps = _unpack(params[pix * per : (pix + 1) * per], k, c)
        top = max(cm[0] for cm in comps)
        norm = sum(math.exp(cm[0] - top) for cm in comps)
        prob = 0.0
        for logit, means, scales, (a, b, cc) in comps:
            v = x[pix * c : (pix + 1) * c]
            locs = [means[0]]
            if c == 3:
                locs += [means[1] + math.tanh(a) * v[0], means[2] + math.tanh(b) * v[0] + math.tanh(cc) * v[1]]
            p = math.exp(logit - top) / norm
            for ch in range(c):
                p *= _mass(v[ch], locs[ch], scales[ch])
            prob += p
        total += math.log(prob)
    return total


@pytest.mark.parametrize("channels,k", [(1, 3), (3, 1), (3, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mixture_log_prob_matches_a_float64_reference(channels: int, k: int, dtype: torch.dtype) -> None:
    n_pixels = 6
    g = torch.Generator().manual_seed(10 * channels + k)
    x = torch.randint(0, 256, (n_pixels * channels,), generator=g).double() / 255
    x[:channels] = 0.0  # the first tail
    x[channels : 2 * channels] = 1.0  # the last
    params = _params(n_pixels, heads.params_per_pixel("logistic-mixture", channels, k), seed=k, spread=0.8)
    got = heads.mixture_log_prob(x.to(dtype).unsqueeze(0), params.to(dtype), channels, k)
    want = _reference_mixture(x.tolist(), params[0].tolist(), k, channels)
    assert float(got) == pytest.approx(want, rel=1e-12 if dtype == torch.float64 else 2e-5)


def test_the_mixture_mean_matches_a_reference_with_the_coupling() -> None:
    k, c = 3, 3
    params = _params(4, heads.params_per_pixel("logistic-mixture", c, k), seed=5, spread=0.3)
    params[0, :k] += torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    got = heads.head_mean("logistic-mixture", params, c, k)[0]
    per = heads.params_per_pixel("logistic-mixture", c, k)
    for pix in range(4):
        comps = _unpack(params[0, pix * per : (pix + 1) * per].tolist(), k, c)
        norm = sum(math.exp(cm[0]) for cm in comps)
        want = [0.0, 0.0, 0.0]
        for logit, m, _, (a, b, cc) in comps:
            er = m[0]
            eg = m[1] + math.tanh(a) * er
            eb = m[2] + math.tanh(b) * er + math.tanh(cc) * eg
            for ch, e in enumerate((er, eg, eb)):
                want[ch] += math.exp(logit) / norm * e
        want = [min(1.0, max(0.0, w)) for w in want]
        assert got[pix * c : (pix + 1) * c].tolist() == pytest.approx(want, abs=1e-12)


def test_samples_are_8_bit_and_follow_the_distribution() -> None:
    k, c = 2, 3
    params = _params(1, heads.params_per_pixel("logistic-mixture", c, k), seed=7, spread=0.3)
    params[0, k : k + k * c] = 0.3  # locations in the middle (with the coupling of 0.3: up to 0.55), where the
    params[0, k + 2 * k * c :] = 0.31  # tails' clipping at 0 and 1 is negligible
    params[0, k + k * c : k + 2 * k * c] = -3.0  # scales of about 0.05
    draws = heads.head_sample("logistic-mixture", params.expand(20000, -1), c, k,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.round(draws * 255) / 255, draws)
    mean = heads.head_mean("logistic-mixture", params, c, k)[0]
    assert (draws.mean(dim=0) - mean).abs().max() < 0.01
    dl = torch.tensor([[0.3, -0.2, -2.5, -4.0]], dtype=torch.float64)  # 2 channels' means, then log-scales
    draws = heads.head_sample("discretized-logistic", dl.expand(20000, -1), 2, generator=torch.Generator())
    assert (draws.mean(dim=0) - torch.sigmoid(dl[0, :2])).abs().max() < 0.01


# ---------------------------------------------------------------------------------------------- floor and start


def test_the_log_scale_floor_keeps_the_likelihood_finite_and_its_gradient_zero_below() -> None:
    """Per pixel [mean, log-scale] (discretized logistic) or [logit, mean, log-scale] (one component): a log-scale
    of -100 counts as ``LOG_SCALE_MIN``, and gets no gradient."""
    x = torch.tensor([[0.0, 0.5, 1.0]])

    def pixels(per: int, log_scale: float) -> torch.Tensor:
        mean = torch.full((3, 1), 0.5 if per == 3 else 0.0)  # the location 0.5 either way
        return torch.cat([torch.zeros(3, per - 2), mean, torch.full((3, 1), log_scale)], dim=1).reshape(1, -1)

    for name, per in (("discretized-logistic", 2), ("logistic-mixture", 3)):
        at = lambda log_scale, per=per: pixels(per, log_scale)  # noqa: E731
        floor = log_likelihood(name, x, at(heads.LOG_SCALE_MIN), channels=1, mixtures=1)
        params = at(-100.0).requires_grad_()
        lp = log_likelihood(name, x, params, channels=1, mixtures=1)
        assert torch.isfinite(lp).all() and torch.equal(lp.detach(), floor)
        assert not torch.equal(log_likelihood(name, x, at(heads.LOG_SCALE_MIN + 0.1), channels=1, mixtures=1), floor)
        lp.sum().backward()
        assert torch.equal(params.grad.reshape(3, per)[:, -1], torch.zeros(3))


def _smooth_colour_images(n: int, size: int = 16) -> torch.Tensor:
    """Real-looking colour images: smooth random fields with edges, as uint8 rows (N, H*W*3)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    img = (img * 1.4 - 0.2).clamp(0, 1)
    return (img.permute(0, 2, 3, 1).reshape(n, -1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("preset", ["mlp", "conv"])
@pytest.mark.parametrize("head", ["discretized-logistic", "logistic-mixture"])
def test_an_untrained_model_starts_below_8_bits_per_dim(preset: str, head: str) -> None:
    """Real-looking images start below the 8 bits of the uniform code; uniform noise, whose entropy is 8 bits
    and which no other code reaches, starts within 0.3 bits of it (a grey mixture of 5: within 0.15)."""
    grey = torch.from_numpy(load_embedded().test_images[:64].reshape(64, -1))
    for images, shape in ((grey, (28, 28)), (_smooth_colour_images(32), (16, 16, 3))):
        torch.manual_seed(0)
        hidden = [16] if preset == "mlp" else [8, 16]
        model = VAE(model_config(preset, zdim=4, hidden=hidden, image_shape=shape, head=head,
                                 mixtures=5 if head == "logistic-mixture" else 0))
        noise = torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
        for x, most in ((images, 8.0), (noise, 8.15 if head == "logistic-mixture" and shape == (28, 28) else 8.3)):
            with torch.no_grad():
                xf = x.float() / 255
                mu, logvar = model.encode(xf)
                lp = log_likelihood(head, xf, model.decode(mu), channels=model.channels, mixtures=model.config.mixtures)
            bpd = float(-lp.mean()) / (x.shape[1] * math.log(2))
            assert bpd <= most, (shape, bpd)


# ---------------------------------------------------------------------------------------------- runs


def _train(tiny_data: Path, out: Path, **kw) -> vaekit.Run:
    base = dict(dataset="mnist", data_dir=str(tiny_data), epochs=2, batch_size=128, device="cpu", progress=False,
                artifacts=False, model="mlp", hidden=[16], zdim=2)
    return vaekit.train(TrainConfig(**{**base, **kw}), out)


def test_mixtures_is_validated_and_stored_so_the_model_reloads(tiny_data: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="--mixtures .* logistic-mixture"):
        TrainConfig(likelihood="discretized-logistic", mixtures=3).validate()
    assert main(["train", "--likelihood", "bernoulli", "--mixtures", "3", "--out", str(tmp_path / "x"),
                 "--dataset", "mnist", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop --mixtures" in err
    run = _train(tiny_data, tmp_path / "run", likelihood="logistic-mixture", mixtures=3, epochs=1)
    model = vaekit.load_model(run.path)
    assert (model.config.head, model.config.mixtures, model.params_per_pixel) == ("logistic-mixture", 3, 9)
    assert model.log_sigma is None


@pytest.mark.parametrize("head", ["discretized-logistic", "logistic-mixture"])
def test_resume_is_bit_for_bit_with_a_head(tiny_data: Path, tmp_path: Path, head: str) -> None:
    kw = dict(likelihood=head, mixtures=3 if head == "logistic-mixture" else None)
    full = _train(tiny_data, tmp_path / "full", **kw)
    _train(tiny_data, tmp_path / "split", **{**kw, "epochs": 1})
    resumed = vaekit.train(TrainConfig(**{**json.loads((tmp_path / "split" / runs.CONFIG).read_text())["train"],
                                          "epochs": 2}), tmp_path / "split", resume=True)
    a, b = runs.read_tensors(full.path / runs.WEIGHTS)[0], runs.read_tensors(resumed.path / runs.WEIGHTS)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["test_loss"] for r in resumed.metrics] == [r["test_loss"] for r in full.metrics]


@pytest.mark.parametrize("head", ["discretized-logistic", "logistic-mixture"])
def test_evaluate_nll_reports_8_bit_bits_per_dim(tiny_data: Path, tmp_path: Path, head: str, capsys) -> None:
    run = _train(tiny_data, tmp_path / "run", likelihood=head, mixtures=2 if head == "logistic-mixture" else None,
                 epochs=1)
    capsys.readouterr()
    assert main(["evaluate", str(run.path), "--nll", "--samples", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert math.isfinite(out["nll"]) and 0 < out["bits_per_dim"] < 8
    assert out["nll_protocol"]["bits_per_dim"].startswith("8-bit")
    assert head in out["protocol"]["likelihood"]
    assert out["nll"] <= out["test_loss"] + 1.0  # the IWAE bound with 10 draws is (about) below the ELBO


def test_a_stored_run_of_the_per_pixel_global_scale_still_loads_and_evaluates(tiny_data: Path,
                                                                             tmp_path: Path, capsys) -> None:
    """Runs stored before the heads: no "head" in config.json, one logit per pixel and a log_sigma weight."""
    run = make_run(tmp_path / "run", tiny_data, preset="mlp", hidden=[16], likelihood="discretized-logistic",
                   sigma=0.0625, learn_sigma=True)
    stored = runs.read_json(run / runs.CONFIG)
    for key in ("head", "mixtures"):
        del stored["model"][key]
    del stored["train"]["mixtures"]
    runs.write_json(run / runs.CONFIG, stored)
    model = vaekit.load_model(run)
    assert model.config.head == "logits" and model.log_sigma is not None and model.params_per_pixel == 1
    z = torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(model.mean_image(model.decode(z)), torch.sigmoid(model.decode(z)))
    assert main(["evaluate", str(run), "--nll", "--samples", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nll_protocol"]["bits_per_dim"].startswith("8-bit")
    assert "learned per-pixel scales" in out["protocol"]["likelihood"]
    assert main(["plot", str(run)]) == 0 and main(["explore", str(run)]) == 0


@pytest.mark.parametrize("head", ["discretized-logistic", "logistic-mixture"])
def test_figures_and_explorer_of_a_head_run(tiny_data: Path, tmp_path: Path, head: str) -> None:
    run = _train(tiny_data, tmp_path / "run", likelihood=head, mixtures=2 if head == "logistic-mixture" else None,
                 epochs=1, artifacts=True)
    text = (run.path / "explorer.html").read_text()
    start = text.index(">", text.index('id="vaekit-data"')) + 1
    data = json.loads(text[start : text.index("</script>", start)])
    assert data["head"] == {"type": head, "perPixel": 2 if head == "discretized-logistic" else 6,
                            "mixtures": 2 if head == "logistic-mixture" else 0}
    assert data["layers"][-1]["out"] == 784 * data["head"]["perPixel"]
    assert np.isfinite(json.loads(json.dumps(data["range"])))
