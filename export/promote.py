"""Promote, pin and roll back model versions by editing ``version_policy`` in ``config.pbtxt``.

    python export/promote.py --model-repository models --name digits_lt status
    python export/promote.py --model-repository models --name digits_lt promote 2
    python export/promote.py --model-repository models --name digits_lt pin 1
    python export/promote.py --model-repository models --name digits_lt rollback [--to 1]

The service re-reads ``config.pbtxt`` at every repository poll (``RESCOM_POLL_INTERVAL_S``): it loads and
warms the newly selected version while the old one keeps answering, swaps, then drains the old one. Triton
reads the same policy. Only the ``version_policy`` line changes; comments and other fields stay.

- ``promote V``: serve V. When V is the newest version the policy becomes ``latest 1`` (later exports that
  pass the promotion gate go live by themselves); otherwise ``specific [V]``.
- ``pin V``: ``specific [V]``: serve V and nothing else until the next promote.
- ``rollback``: serve the newest version older than the one served now whose promotion gate did not fail
  (or ``--to V``), as ``specific [V]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rescom import model_repository as mr

__all__ = ["current_policy", "pin", "promote", "rollback", "served_versions", "set_policy", "stage_version"]


def current_policy(repository: str | Path, name: str) -> mr.VersionPolicy:
    """The policy of ``config.pbtxt`` (Triton's default ``latest 1`` when there is none)."""
    config = mr.read_config(repository, name)
    return config.version_policy if config is not None else mr.VersionPolicy()


def served_versions(repository: str | Path, name: str) -> list[int]:
    """Complete versions the policy serves, newest first."""
    complete = mr.list_versions(repository, name, complete=True)
    return current_policy(repository, name).select(complete)


def set_policy(repository: str | Path, name: str, policy: mr.VersionPolicy) -> None:
    """Rewrite only the ``version_policy`` field of ``config.pbtxt`` (atomically)."""
    path = mr.config_path(repository, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; export the model first")
    text = path.read_text()
    mr.write_text_atomic(path, mr.update_config_text(text, {"version_policy": policy.to_pbtxt()}))


def stage_version(repository: str | Path, name: str, version: int) -> mr.VersionPolicy | None:
    """Make sure ``version`` will not be served: pin the policy to what is served now (without it).

    Returns:
        The new policy, or ``None`` when the current one already excludes ``version``.
    """
    policy = current_policy(repository, name)
    complete = [v for v in mr.list_versions(repository, name, complete=True) if v != version]
    if policy.kind == "specific" and version not in policy.versions:
        return None
    if not mr.config_path(repository, name).is_file():
        return None  # no config yet: export creates it right after (and the first version is never staged)
    keep = tuple(sorted(policy.select(complete)))
    if not keep:
        return None
    pinned = mr.VersionPolicy("specific", versions=keep)
    set_policy(repository, name, pinned)
    return pinned


def _require(repository: str | Path, name: str, version: int) -> None:
    complete = mr.list_versions(repository, name, complete=True)
    if version not in complete:
        raise ValueError(f"{name} has no complete version {version}; complete versions: {complete or 'none'}")


def promote(repository: str | Path, name: str, version: int) -> mr.VersionPolicy:
    """Serve ``version``: ``latest 1`` when it is the newest complete version, else ``specific [version]``."""
    _require(repository, name, version)
    newest = mr.latest_version(repository, name)
    policy = (
        mr.VersionPolicy("latest", num_versions=1)
        if version == newest
        else mr.VersionPolicy("specific", versions=(version,))
    )
    set_policy(repository, name, policy)
    return policy


def pin(repository: str | Path, name: str, version: int) -> mr.VersionPolicy:
    """Serve exactly ``version`` (``specific [version]``)."""
    _require(repository, name, version)
    policy = mr.VersionPolicy("specific", versions=(version,))
    set_policy(repository, name, policy)
    return policy


def _gate_failed(repository: str | Path, name: str, version: int) -> bool:
    promotion = mr.read_metadata(repository, name, version).get("promotion") or {}
    return promotion.get("status") == "staged"


def rollback(repository: str | Path, name: str, to: int | None = None) -> mr.VersionPolicy:
    """Serve ``to``, or the newest version older than the served one whose gate did not fail."""
    if to is None:
        served = served_versions(repository, name)
        if not served:
            raise ValueError(f"{name}: no version is served now; use promote or pin")
        older = [
            v
            for v in mr.list_versions(repository, name, complete=True)
            if v < served[0] and not _gate_failed(repository, name, v)
        ]
        if not older:
            raise ValueError(f"{name}: no version older than {served[0]} to roll back to")
        to = older[-1]
    return pin(repository, name, to)


def _status(repository: str, name: str) -> str:
    policy = current_policy(repository, name)
    served = set(served_versions(repository, name))
    lines = [f"{name}: version_policy {policy.describe()}"]
    for v in mr.list_versions(repository, name, complete=True):
        meta = mr.read_metadata(repository, name, v)
        summary = mr.metrics_summary(meta) or {}
        served_fig = (summary.get("served") or {}).get("balanced_acc")
        status = (meta.get("promotion") or {}).get("status", "-")
        figure = "n/a" if served_fig is None else f"{served_fig:.2f} %"
        lines.append(
            f"  version {v}: {'SERVED' if v in served else 'not served'}; gate {status}; balanced_acc {figure}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", default="models", help="repository root (default: %(default)s)")
    p.add_argument("--name", required=True, help="model name")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="versions, which are served, their gate result and accuracy")
    for command in ("promote", "pin"):
        sub.add_parser(command).add_argument("version", type=mr.parse_version)
    sub.add_parser("rollback").add_argument("--to", type=mr.parse_version)
    args = p.parse_args(argv)
    repo, name = args.model_repository, args.name
    try:
        mr.check_model_name(name)
        if args.command == "status":
            print(_status(repo, name))
            return 0
        if args.command == "promote":
            policy = promote(repo, name, args.version)
        elif args.command == "pin":
            policy = pin(repo, name, args.version)
        else:
            policy = rollback(repo, name, args.to)
    except (FileNotFoundError, ValueError, mr.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    served = ", ".join(map(str, served_versions(repo, name)))
    print(
        f"{name}: version_policy is now {policy.describe()}; serving version(s) {served} after the service's "
        "next repository poll"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
