"""Export a ResCom checkpoint to a Triton-compatible ONNX model repository.

    python export/to_onnx.py --checkpoint runs/digits_lt/best.pt --model-repository models --name digits_lt

Writes ``models/NAME/N/model.onnx`` and ``models/NAME/N/rescom.json``, creates ``models/NAME/config.pbtxt`` and
``models/NAME/labels.txt`` once (later exports update only the fields export owns); verifies the graph and its
parity with PyTorch, runs the promotion gate (the new version is staged, not served, when it is worse than the
served one), then prints the tree.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.exporter import export_checkpoint
from export.gate import DEFAULT_TOLERANCE
from export.verify import ParityError


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python export/to_onnx.py`` (see the module docstring)."""
    p = argparse.ArgumentParser(description="Export a ResCom checkpoint to an ONNX model repository.")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by training/train.py")
    p.add_argument("--model-repository", default="models", help="repository root (default: %(default)s)")
    p.add_argument("--name", required=True, help="model name (folder under the repository)")
    p.add_argument("--version", type=int, help="version number (default: one above the latest)")
    p.add_argument("--force", action="store_true", help="overwrite an existing version")
    p.add_argument("--features", action="store_true", help="add a second output `features` [batch, D]")
    p.add_argument(
        "--fp16", action="store_true", help="half-precision network (inputs/outputs stay uint8/fp32)"
    )
    p.add_argument("--data-dir", help="dataset root for parity images and temperature fitting")
    p.add_argument(
        "--max-batch-size",
        type=int,
        help="Triton max_batch_size (default: keep config.pbtxt's; 64 for a new model)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument(
        "--calibration",
        default="bcts",
        choices=["bcts", "temperature"],
        help="fit T and a per-class bias b (bcts) or T only (temperature) on the validation split "
        "(default: %(default)s)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip onnx.checker and the parity check")
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="skip the promotion gate (the version policy decides alone whether the new version is served)",
    )
    p.add_argument(
        "--gate-tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest allowed drop of the served balanced_acc against the served version, in points "
        "(default: %(default)s)",
    )
    return p


def print_tree(root: Path) -> None:
    """Print the files under ``root`` (a model's folder in the repository), indented by depth, with sizes."""
    print(f"{root}/")
    for path in sorted(root.rglob("*")):
        depth = len(path.relative_to(root).parts)
        size = f"  ({path.stat().st_size:,} bytes)" if path.is_file() else "/"
        print(f"{'    ' * depth}{path.name}{size}")


def main(argv: list[str] | None = None) -> int:
    """Export one checkpoint as a new model version and print what was written.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a user error (printed as one line on stderr).
    """
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python export/to_onnx.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        result = export_checkpoint(
            args.checkpoint,
            args.model_repository,
            args.name,
            args.version,
            force=args.force,
            with_features=args.features,
            fp16=args.fp16,
            data_dir=args.data_dir,
            max_batch_size=args.max_batch_size,
            opset=args.opset,
            verify=not args.no_verify,
            command=command,
            calibration=args.calibration,
            gate=not args.no_gate,
            gate_tolerance=args.gate_tolerance,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ParityError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.parity is not None:
        print(result.parity.summary())
    meta = result.metadata
    print(
        f"exported {meta['name']} version {meta['version']}: {len(meta['class_names'])} classes, "
        f"T = {meta['calibration']['temperature']}, sha256 {meta['onnx']['sha256'][:16]}..."
    )
    print_tree(Path(args.model_repository) / args.name)
    if result.gate is not None and result.gate.warnings:
        print(
            f"WARNING: {meta['name']} version {meta['version']} is served but {'; '.join(result.gate.warnings)}"
        )
    if result.staged:
        print(
            f"STAGED: {meta['name']} version {meta['version']} is not served: "
            f"{'; '.join(result.gate.reasons)}. Promote it with: python export/promote.py --model-repository "
            f"{shlex.quote(args.model_repository)} --name {meta['name']} promote {meta['version']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
