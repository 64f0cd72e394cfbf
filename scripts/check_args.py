"""Parse command lines with each script's own argparse parser, without running the scripts (gpu_check --dry-run).

    python scripts/check_args.py benchmarks/serve_load.py --providers cuda --max-batch-size 64 [::: SCRIPT ARGS...]

Several command lines may be given, separated by ``:::`` (one interpreter start for all of them).

The script is imported as a module (its imports run: a missing dependency fails here too) and its parser is
taken from ``get_args_parser()`` or ``parse_args(argv)``. An unknown flag or a bad value exits 2 with argparse's
one-line message, exactly as the real run would; a valid command line prints ``ok: SCRIPT`` and exits 0.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check(argv: list[str]) -> int:
    """Parse one command line ``SCRIPT ARGS...``; 0 when it parses, 2 otherwise."""
    if not argv:
        print("usage: check_args.py SCRIPT [ARGS...] [::: SCRIPT [ARGS...]]", file=sys.stderr)
        return 2
    path = (ROOT / argv[0]).resolve()
    if not path.is_file():
        print(f"check_args: no script {argv[0]}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"_checked_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is imported
    sys.argv = [str(path), *argv[1:]]
    spec.loader.exec_module(module)
    try:
        if hasattr(module, "get_args_parser"):
            module.get_args_parser().parse_args(argv[1:])
        elif hasattr(module, "parse_args"):
            module.parse_args(argv[1:])
        else:
            print(
                f"check_args: {argv[0]} has neither get_args_parser() nor parse_args(argv)", file=sys.stderr
            )
            return 2
    except SystemExit as exit_:  # argparse: exit 2 after printing its one-line error
        return int(exit_.code or 0)
    print(f"ok: {' '.join(argv)}")
    return 0


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    commands: list[list[str]] = [[]]
    for token in argv:
        if token == ":::":
            commands.append([])
        else:
            commands[-1].append(token)
    return max(check(c) for c in commands)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
