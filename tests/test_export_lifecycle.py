"""Export never clobbers config.pbtxt or labels.txt; the promotion gate stages a worse candidate; promote.py
promotes, pins and rolls back by editing only version_policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import promote
from export.exporter import export_checkpoint
from export.to_onnx import main as to_onnx_main
from rescom import model_repository as mr
from rescom.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow
USER_COMMENT = "# ops: pinned to 3 instances for the nightly batch, ask #ml-serving before changing\n"


def _triton(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def repo(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    run_dir, _ = tiny_run
    root = tmp_path_factory.mktemp("lifecycle")
    export_checkpoint(run_dir / "best.pt", root, "digits", verify=False)
    return root, run_dir / "best.pt"


def test_user_edits_survive_three_exports(repo):
    root, checkpoint = repo
    path = mr.config_path(root, "digits")
    edited = USER_COMMENT + path.read_text().replace("count: 1", "count: 3")
    path.write_text(edited.replace("max_batch_size: 64", "max_batch_size: 48  # measured on the A10"))
    labels_before = (root / "digits" / mr.LABELS_FILE).read_bytes()
    for _ in range(3):
        # the gate is not under test here (the 2-epoch model is near chance and its T may sit at the fit's bound)
        result = export_checkpoint(checkpoint, root, "digits", verify=False, gate=False)
        assert not result.staged and result.metadata["max_batch_size"] == 48
    text = path.read_text()
    assert text.startswith(USER_COMMENT) and "max_batch_size: 48  # measured on the A10" in text
    config = _triton(path)
    assert config.instance_group[0].count == 3 and config.max_batch_size == 48
    assert list(config.output[0].dims) == [10] and config.name == "digits"
    assert (root / "digits" / mr.LABELS_FILE).read_bytes() == labels_before
    assert mr.list_versions(root, "digits", complete=True) == [1, 2, 3, 4]
    assert promote.served_versions(root, "digits") == [4]  # latest 1: each export went live


def test_differing_class_names_are_refused_without_force(repo, tmp_path):
    root, checkpoint = repo
    state = load_checkpoint(checkpoint)
    state["meta"]["class_names"] = [f"digit-{c}" for c in state["meta"]["class_names"]]
    renamed = save_checkpoint(state, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match="every version of a model shares one labels file"):
        export_checkpoint(renamed, root, "digits", verify=False)
    assert mr.list_versions(root, "digits") == [1, 2, 3, 4]  # nothing left behind
    assert (root / "digits" / mr.LABELS_FILE).read_text().split()[0] == "0"


def test_a_worse_candidate_is_staged_then_promoted_and_rolled_back(repo, capsys):
    root, checkpoint = repo
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--model-repository",
        str(root),
        "--name",
        "digits",
        "--no-verify",
    ]
    # A tolerance of -1 demands one point of improvement: the same weights again must be held back.
    assert to_onnx_main([*argv, "--gate-tolerance", "-1"]) == 0
    out = capsys.readouterr().out
    staged_line = next(line for line in out.splitlines() if line.startswith("STAGED:"))
    assert "digits version 5 is not served" in staged_line and "below version 4's" in staged_line
    assert staged_line.endswith("--name digits promote 5")
    meta = mr.read_metadata(root, "digits", 5)
    assert meta["promotion"]["status"] == "staged" and meta["promotion"]["gate"]["baseline_version"] == 4
    assert mr.read_config(root, "digits").version_policy == mr.VersionPolicy("specific", versions=(4,))
    assert promote.served_versions(root, "digits") == [4]
    assert mr.config_path(root, "digits").read_text().startswith(USER_COMMENT)

    assert promote.main(["--model-repository", str(root), "--name", "digits", "promote", "5"]) == 0
    assert mr.read_config(root, "digits").version_policy == mr.VersionPolicy("latest", num_versions=1)
    assert promote.served_versions(root, "digits") == [5]
    assert promote.main(["--model-repository", str(root), "--name", "digits", "rollback"]) == 0
    assert promote.served_versions(root, "digits") == [4]
    assert promote.main(["--model-repository", str(root), "--name", "digits", "pin", "2"]) == 0
    assert promote.served_versions(root, "digits") == [2]
    assert promote.main(["--model-repository", str(root), "--name", "digits", "status"]) == 0
    status = capsys.readouterr().out
    assert "version_policy specific [2]" in status and "version 5: not served; gate staged" in status
    assert promote.main(["--model-repository", str(root), "--name", "digits", "promote", "9"]) == 2
    assert "no complete version 9" in capsys.readouterr().err
    config = _triton(mr.config_path(root, "digits"))
    assert list(config.version_policy.specific.versions) == [2] and config.instance_group[0].count == 3
