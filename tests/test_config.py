import math

import pytest
import yaml

from rescom.config import DEFAULT_CONFIG, apply_overrides, load_config, merge, validate_config
from rescom.schedule import lr_multiplier


def test_defaults_are_the_published_cifar100_recipe():
    loss, optim = DEFAULT_CONFIG["loss"], DEFAULT_CONFIG["optim"]
    assert (loss["temperature"], loss["con_weight"], loss["queue_size"]) == (0.2, 0.5, 10)
    assert (loss["num_positives"], loss["num_negatives"], loss["beta"]) == (1, 400, 0.999999)
    assert (optim["batch_size"], optim["epochs"], optim["lr"], optim["weight_decay"]) == (128, 400, 0.1, 5e-4)
    assert optim["milestones"] == [320, 360] and optim["warmup_epochs"] == 10


def test_recipe_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 0.05}, "data": {"kwargs": {"imbalance_factor": 7}}}))
    cfg = load_config(path)
    assert cfg["optim"]["lr"] == 0.05 and cfg["optim"]["epochs"] == 400
    assert cfg["data"]["kwargs"] == {"imbalance_factor": 7}
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        merge(DEFAULT_CONFIG, {"optim": {"lrr": 1}})


def test_key_value_overrides_parse_yaml_values():
    cfg = apply_overrides(
        DEFAULT_CONFIG,
        [
            "optim.lr=1e-3",
            "optim.milestones=[5, 8]",
            "model.pretrained_weights=null",
            "data.kwargs.val_per_class=3",
        ],
    )
    assert cfg["optim"]["lr"] == pytest.approx(1e-3)
    assert cfg["optim"]["milestones"] == [5, 8]
    assert cfg["model"]["pretrained_weights"] is None
    assert cfg["data"]["kwargs"]["val_per_class"] == 3
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(DEFAULT_CONFIG, ["optim.lr"])
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(DEFAULT_CONFIG, ["optim.nope=1"])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("method", "supcon", "method must be one of"),
        ("loss.beta", 1.0, "beta"),
        ("optim.schedule", "poly", "schedule"),
        ("train.amp", "fp8", "amp"),
        ("loss.temperature", 0, "temperature"),
    ],
)
def test_validation_names_the_allowed_values(key, value, match):
    cfg = apply_overrides(DEFAULT_CONFIG, [f"{key}={value}"])
    with pytest.raises(ValueError, match=match):
        validate_config(cfg)


def test_step_schedule_is_really_applied():
    f = lr_multiplier("step", 400, warmup_epochs=10, milestones=[320, 360], gamma=0.1)
    assert [f(e) for e in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(318) == 1.0
    assert f(319) == pytest.approx(0.1)  # the 320th epoch
    assert f(359) == pytest.approx(0.01)
    assert f(399) == pytest.approx(0.01)


def test_cosine_schedule_ends_at_min_ratio():
    f = lr_multiplier("cosine", 100, warmup_epochs=5, min_lr_ratio=1e-5)
    assert f(4) == pytest.approx(1.0)
    assert f(5) == pytest.approx(1.0)
    assert f(99) == pytest.approx(1e-5)
    values = [f(e) for e in range(5, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert math.isclose(f(52), 0.5, abs_tol=0.02)


def test_every_bundled_recipe_loads_and_validates():
    from pathlib import Path

    recipes = sorted(Path("training/configs").glob("*.yaml"))
    assert len(recipes) >= 10
    for path in recipes:
        cfg = load_config(path)
        validate_config(cfg)
        k, qn = cfg["loss"]["queue_size"], cfg["loss"]["num_negatives"]
        assert cfg["loss"]["num_positives"] <= k, path
        assert qn >= 1, path
