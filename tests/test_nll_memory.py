"""The log-likelihood estimate's chunks are sized from the model's activations and the device's memory.

A 784-pixel MLP keeps the CPU's chunks of ``ROWS`` rows (so its estimates do not change); a conv decoder,
whose feature maps take many times its output, gets fewer rows per chunk, and the memory an estimate
actually takes on the CPU, measured as the peak resident size of a process running it, stays within the
budget.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vaekit.eval import likelihood
from vaekit.eval.likelihood import ROWS, ROWS_ACCELERATOR, chunk_rows, row_bytes
from vaekit.model import VAE, model_config

CPU = torch.device("cpu")


def _model(preset: str, shape: tuple[int, ...]) -> VAE:
    torch.manual_seed(0)
    return VAE(model_config(preset, image_shape=shape))


def test_an_mlp_keeps_the_cpu_chunks_and_a_conv_decoder_gets_fewer_rows() -> None:
    mlp, conv = _model("seed", (28, 28)), _model("conv", (28, 28))
    assert chunk_rows(CPU, row_bytes(mlp)) == ROWS
    assert row_bytes(conv) > 5 * row_bytes(mlp)  # feature maps: a conv decoder's rows cost far more
    assert chunk_rows(CPU, row_bytes(conv)) == likelihood.CPU_MEMORY // row_bytes(conv) < ROWS


def test_accelerator_chunks_fit_in_a_share_of_the_free_memory(monkeypatch) -> None:
    conv = _model("conv", (64, 64, 3))
    per_row = row_bytes(conv)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 << 30, 80 << 30))
    assert chunk_rows(cuda, per_row) == int(likelihood.FREE_SHARE * (2 << 30)) // per_row
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (200 << 30, 200 << 30))
    assert chunk_rows(cuda, per_row) == likelihood.ACCELERATOR_MEMORY // per_row  # a cap, free memory or not
    assert chunk_rows(cuda, row_bytes(_model("seed", (28, 28)))) == ROWS_ACCELERATOR
    assert chunk_rows(cuda, 1 << 40) == 1  # always at least one row


# Run in a fresh process so its peak resident size is the estimate's: a budget of 48 MiB for a conv model whose
# 2,000 decoded rows (2 images x 1,000 draws) took about 250 MiB when the chunks ignored the model.
_PEAK = """
import json, resource, torch
torch.set_num_threads(1)
from vaekit.eval import likelihood
from vaekit.model import VAE, model_config
likelihood.CPU_MEMORY = 48 << 20
torch.manual_seed(0)
model = VAE(model_config("conv", image_shape=(16, 16), learn_sigma=True, sigma_init=0.1))
images = torch.randint(0, 256, (2, 256), dtype=torch.uint8)
likelihood.model_log_px(model, images[:1], 2, "discretized-logistic", rows=2)  # load the kernels first
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
est = likelihood.model_log_px(model, images, 1000, "discretized-logistic", compile=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": after - before, "finite": bool(torch.isfinite(est.log_px).all())}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_a_conv_estimate_stays_within_its_memory_budget_on_the_cpu() -> None:
    done = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["finite"] and result["peak_kib"] * 1024 < 48 << 20
