"""rescom.model_repository: Triton's naming and version rules, config.pbtxt reading and field-preserving edits."""

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from rescom import model_repository as mr

TENSORS = (
    [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}],
    [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
)


def _triton(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name,ok", [("1", True), ("12", True), ("0", False), ("01", False), ("v1", False)])
def test_version_names_follow_triton(name, ok):
    assert mr.is_version_name(name) is ok
    if ok:
        assert mr.parse_version(name) == int(name)
    else:
        with pytest.raises(ValueError, match="positive integer without leading zeros"):
            mr.parse_version(name)


def test_listing_ignores_what_triton_ignores(tmp_path: Path):
    for folder in ("1", "2", "10", "0", "01", "latest"):
        (tmp_path / "m" / folder).mkdir(parents=True)
    (tmp_path / "m" / "2" / mr.METADATA_FILE).write_text("{}")
    (tmp_path / "bad name").mkdir()
    assert mr.list_versions(tmp_path, "m") == [1, 2, 10]
    assert mr.list_versions(tmp_path, "m", complete=True) == [2]
    assert mr.latest_version(tmp_path, "m") == 2 and mr.next_version(tmp_path, "m") == 11
    assert mr.list_models(tmp_path) == ["m"]
    with pytest.raises(ValueError, match="not allowed"):
        mr.check_model_name("../etc")


@pytest.mark.parametrize(
    "policy",
    [
        mr.VersionPolicy("latest", num_versions=2),
        mr.VersionPolicy("specific", versions=(1, 3)),
        mr.VersionPolicy("all"),
    ],
)
def test_rendered_config_reads_the_same_here_and_in_triton(policy):
    text = mr.render_config("digits", *TENSORS, max_batch_size=48, policy=policy)
    ours, triton = mr.parse_config(text), _triton(text)
    assert ours.name == triton.name == "digits" and ours.max_batch_size == triton.max_batch_size == 48
    assert ours.version_policy == policy
    assert triton.version_policy.WhichOneof("policy_choice") == policy.kind
    if policy.kind == "specific":
        assert list(triton.version_policy.specific.versions) == [1, 3]
    assert ours.label_filename == triton.output[0].label_filename == mr.LABELS_FILE
    assert ours.inputs[0]["dims"] == list(triton.input[0].dims) == [32, 32, 3]
    assert ours.max_queue_delay_us == triton.dynamic_batching.max_queue_delay_microseconds == 2000


def test_policy_selection_matches_triton_semantics():
    available = [1, 2, 3]
    assert mr.VersionPolicy("latest", num_versions=2).select(available) == [3, 2]
    assert mr.VersionPolicy("specific", versions=(1, 3, 7)).select(available) == [3, 1]
    assert mr.VersionPolicy("all").select(available) == [3, 2, 1]
    assert mr.VersionPolicy().select([]) == []


def test_updating_owned_fields_keeps_comments_and_user_fields():
    text = (
        "# tuned for the A10 box, do not touch\n"
        + mr.render_config("digits", *TENSORS, max_batch_size=64).replace("count: 1", "count: 4")
        + "model_warmup [ ]  # user field unknown to us\n"
    )
    owned = mr.render_owned_fields(
        "digits", TENSORS[0], [{"name": "logits", "datatype": "FP32", "shape": [-1, 12]}]
    )
    updated = mr.update_config_text(
        text,
        {
            "output": owned[owned.index("output [") :],
            "version_policy": mr.VersionPolicy("specific", versions=(2,)).to_pbtxt(),
        },
    )
    assert updated.startswith("# tuned for the A10 box, do not touch\n")
    assert "count: 4" in updated and "# user field unknown to us" in updated
    config, triton = mr.parse_config(updated), _triton(updated)
    assert config.outputs[0]["dims"] == [12] and list(triton.output[0].dims) == [12]
    assert config.version_policy.versions == (2,) and triton.instance_group[0].count == 4
    assert mr.update_config_text(updated, {"max_batch_size": "max_batch_size: 64"}) == updated


def test_repeated_fields_collapse_into_the_replacement():
    text = 'name: "m"\ninput { name: "a" }\ninput { name: "b" }\nmax_batch_size: 8\n'
    updated = mr.update_config_text(text, {"input": 'input [ { name: "c" } ]'})
    assert updated == 'name: "m"\ninput [ { name: "c" } ]\nmax_batch_size: 8\n'


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_batch_size: 8\nversion_policy: { newest: {} }", "version_policy.newest is not a policy"),
        ("version_policy: { specific: { versions: [] } }", "must list positive integers"),
        ("max_batch_size: -1", "max_batch_size must be an integer >= 0"),
        ('name: "m"\ninput [ { name: "x" }', "unexpected end of file"),
        ("name = 3", "unexpected character '='"),
    ],
)
def test_config_errors_are_one_line_with_the_file(text, message):
    with pytest.raises(mr.ConfigError, match=message) as err:
        mr.parse_config(text, where="m/config.pbtxt")
    assert str(err.value).startswith("m/config.pbtxt") and "\n" not in str(err.value)


def test_metrics_summary_reads_old_and_new_metadata():
    old = mr.metrics_summary({"metrics": {"acc": 94.2, "many": 100.0, "medium": 97.0, "few": 89.6}})
    assert old["headline"] == 94.2 and old["headline_kind"] == "raw" and old["served"] is None
    new = mr.metrics_summary(
        {
            "metrics": {
                "raw": {"top1": 94.2, "balanced_acc": 93.0},
                "served": {"top1": 94.0, "balanced_acc": 93.5},
                "thresholds": {"many": 50, "few": 20},
            }
        }
    )
    assert new["headline"] == 94.0 and new["headline_kind"] == "served"
    assert new["thresholds"] == {"many": 50, "few": 20}
    assert mr.metrics_summary({}) is None
