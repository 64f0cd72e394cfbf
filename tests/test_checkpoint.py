import os
import pickle
import random

import numpy as np
import pytest
import torch

from rescom.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _state(epoch: int = 0) -> dict:
    return {
        "model": {"w": torch.arange(4.0)},
        "epoch": epoch,
        "config": {"seed": 0},
        "meta": {"arch": "x"},
        "rng": capture_rng_state(),
    }


def test_round_trip_is_weights_only_loadable(tmp_path):
    path = save_checkpoint(_state(3), tmp_path / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["epoch"] == 3
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(4.0))
    torch.load(path, weights_only=True)  # plain torch can read it safely too


def test_rng_state_restores_every_generator():
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(_state(1), tmp_path / "last.pt")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump(
            {"format": CHECKPOINT_FORMAT, "model": Payload(), "epoch": 0, "config": {}, "meta": {}}, fh
        )
    with pytest.raises(ValueError, match="not a loadable ResCom checkpoint"):
        load_checkpoint(path)


def test_missing_and_foreign_files_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected keys"):
        load_checkpoint(tmp_path / "other.pt")


def test_model_from_checkpoint_rebuilds_the_saved_model(tmp_path):
    """One function maps checkpoint meta to a model (export and evaluation both use it)."""
    from rescom.checkpoint import model_from_checkpoint
    from rescom.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=5, proj_dim=8).eval()
    state = {
        "model": model.state_dict(),
        "epoch": 0,
        "config": {},
        "meta": {"arch": "resnet20", "arch_kwargs": {}, "num_classes": 5, "proj_dim": 8},
    }
    rebuilt = model_from_checkpoint(load_checkpoint(save_checkpoint(state, tmp_path / "best.pt")))
    x = torch.randn(2, 3, 32, 32)  # [N, 3, H, W]
    assert not rebuilt.training
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)["logits"], model(x)["logits"])  # [N, C]
