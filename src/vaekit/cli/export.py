"""``vaekit export``: a run's encoder and decoder as ONNX files, checked with ONNX Runtime before they are kept."""

from __future__ import annotations

import argparse
from typing import Any

from vaekit.cli.common import positive_int
from vaekit.text import printable


def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``export`` subcommand."""
    p = sub.add_parser("export", help="export a run's encoder and decoder to ONNX",
                       description="Write DIR/encoder.onnx (images -> mu, logvar) and DIR/decoder.onnx (z -> the "
                                   "decoder's outputs and the image), with onnx.json and README.md describing their "
                                   "inputs, outputs and input preparation. The files are kept only if ONNX Runtime "
                                   "reproduces PyTorch's outputs within 1e-4. Needs the onnx extra "
                                   "(pip install 'vaekit[onnx]').")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--onnx", required=True, metavar="DIR", help="folder to write the ONNX files to")
    p.add_argument("--opset", type=positive_int, default=None,
                   help="ONNX opset to target (default: the installed exporter's default)")
    p.add_argument("--force", action="store_true", help="replace the exported files in a folder that holds files")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Export, then say where the files are and how closely ONNX Runtime matched PyTorch."""
    from vaekit.use.onnx import export_onnx

    info = export_onnx(args.run, args.onnx, args.opset, force=args.force)
    for part in ("encoder", "decoder"):
        diffs = info["check"]["max_abs_diff_per_output"][info[part]["file"]]
        shown = ", ".join(f"{name} {d:.2g}" for name, d in diffs.items())
        print(printable(f"{args.onnx}/{info[part]['file']}: max difference from PyTorch {shown}"))
    print(f"opset {info['opset']}; max difference {info['check']['max_abs_diff']:.2g} "
          f"(allowed {info['check']['tolerance']:g})")
    return 0
