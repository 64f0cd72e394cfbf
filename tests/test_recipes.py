"""Recipes for users' own data (rescom.recipes): K, Qp, Qn, batch, epochs, λ warm-up, and the warnings."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rescom.config import load_config
from rescom.recipes import check, contrastive_weight, main, overrides, recommend


def test_recommend_respects_the_rarest_class_and_the_negatives_available():
    r = recommend([400, 120, 40, 9, 4])
    assert r.queue_size == 4  # K <= rarest class
    assert r.num_positives == 1 and r.num_negatives == 4 * 4  # Qn = K·(C-1)
    assert 16 <= r.batch_size <= 128 and r.batch_size & (r.batch_size - 1) == 0
    assert r.epochs >= 30 and r.con_warmup_epochs == 0  # measured to hurt (docs/evaluation.md)
    big = recommend([500] * 1000)
    assert big.queue_size == 10 and big.num_negatives == 400 and big.batch_size == 128
    assert recommend([100, 1]).queue_size == 1
    with pytest.raises(ValueError, match=">= 2 classes"):
        recommend([5])


def test_check_warns_about_k_qn_and_qp():
    cfg = load_config("training/configs/digits_lt.yaml")  # K = 4, Qp = 1, Qn = 20
    assert check(cfg, [100, 71, 51, 36, 26, 18, 13, 9, 6, 5]) == []  # digits-LT IF 20: K(C-1) = 36
    warnings = check(cfg, [100, 50, 1])
    assert any("K=4 exceeds the rarest class's 1" in w for w in warnings)
    cfg["loss"]["num_negatives"] = 40
    assert any("Qn=40 exceeds K*(C-1) = 8" in w for w in check(cfg, [100, 50, 5]))
    cfg["method"] = "balanced_softmax"
    assert check(cfg, [100, 50, 1]) == []


def test_contrastive_weight_ramps_linearly_then_holds():
    assert [contrastive_weight(0.5, e, 3) for e in range(5)] == [0.125, 0.25, 0.375, 0.5, 0.5]
    assert contrastive_weight(0.5, 0, 0) == 0.5


def test_overrides_are_accepted_by_the_training_config(tmp_path):
    from rescom.config import apply_overrides, validate_config

    cfg = apply_overrides(
        load_config("training/configs/imagefolder_small.yaml"), overrides(recommend([50, 20, 3]))
    )
    validate_config(cfg)
    assert cfg["loss"]["queue_size"] == 3 and cfg["loss"]["con_warmup_epochs"] == 0


def test_cli_prints_the_recipe_for_a_folder(tmp_path, capsys):
    for name, n in (("cat", 6), ("dog", 2)):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 classes, 8 training images, 6..2 per class" in out and "loss.queue_size=2" in out
    assert main([str(tmp_path / "nope")]) == 2
