"""rescom.models: every registered architecture builds, runs forward/backward, and exports consistently."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rescom.models import InferenceModel, ResComModel, create_model, list_models, load_encoder_weights

CIFAR_ARCHS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
LARGE_ARCHS = ["resnet50", "resnext50_32x4d"]


def _input(model: ResComModel, batch: int = 2) -> torch.Tensor:
    size = 64 if model.feat_dim == 2048 else 32
    return torch.randn(batch, 3, size, size)


def test_registry_lists_all_architectures():
    assert set(CIFAR_ARCHS + LARGE_ARCHS) <= set(list_models())


def test_unknown_arch_lists_the_available_ones():
    with pytest.raises(ValueError, match="resnet32"):
        create_model("resnet33", num_classes=10)


def test_unsupported_option_is_rejected_and_none_options_are_dropped():
    with pytest.raises(ValueError, match="shortcut"):
        create_model("resnet20", num_classes=10, widen=2)
    model = create_model("resnet20", num_classes=10, shortcut=None, zero_init_residual=None)
    assert model.arch_kwargs == {}


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_invalid_sizes_are_rejected(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_classes=bad)
    with pytest.raises(ValueError, match="proj_dim"):
        create_model("resnet20", num_classes=3, proj_dim=bad)


@pytest.mark.parametrize("arch", [a for a in sorted(set(list_models())) if a != "resnext50_32x4d"])
def test_forward_shapes_finite_and_backward(arch):
    model = create_model(arch, num_classes=7, proj_dim=16)
    assert model.arch == arch
    assert model.feat_dim == (2048 if arch in LARGE_ARCHS else 64)
    x = _input(model)
    out = model(x)
    assert set(out) == {"logits", "embedding", "features"}
    assert out["logits"].shape == (2, 7)
    assert out["embedding"].shape == (2, 16)
    assert out["features"].shape == (2, model.feat_dim)
    for v in out.values():
        assert torch.isfinite(v).all()
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2))
    loss = F.cross_entropy(out["logits"], torch.tensor([0, 1])) + out["embedding"].sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_resnext50_builds_with_2048_features():
    model = create_model("resnext50_32x4d", num_classes=5, proj_dim=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["features"].shape == (1, 2048)


@pytest.mark.parametrize(
    "depth,params", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)]
)
def test_cifar_resnet_parameter_counts_match_he_et_al(depth, params):
    encoder = create_model(f"resnet{depth}", num_classes=10).encoder
    n = sum(p.numel() for p in encoder.parameters())
    assert abs(n - params) / params < 0.03


def test_shortcut_b_adds_projection_parameters():
    a = create_model("resnet20", num_classes=10, shortcut="A")
    b = create_model("resnet20", num_classes=10, shortcut="B")
    assert b.arch_kwargs == {"shortcut": "B"}
    assert sum(p.numel() for p in b.parameters()) > sum(p.numel() for p in a.parameters())
    assert b(torch.randn(2, 3, 32, 32))["features"].shape == (2, 64)
    with pytest.raises(ValueError, match="shortcut must be one of"):
        create_model("resnet20", num_classes=10, shortcut="C")


@pytest.mark.parametrize("arch", ["resnet20", "resnet50"])
def test_channels_last_matches_contiguous(arch):
    model = create_model(arch, num_classes=5, proj_dim=8).eval()
    x = _input(model)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-4)


def test_channels_last_backward():
    model = create_model("resnet20", num_classes=5, proj_dim=8).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = model(x)
    (out["logits"].sum() + out["embedding"].sum()).backward()
    assert model.encoder.conv1.weight.grad is not None


@pytest.mark.parametrize("arch", ["resnet32", "resnet50"])
def test_inference_model_matches_model_logits(arch):
    model = create_model(arch, num_classes=6, proj_dim=8).eval()
    x = _input(model, batch=3)
    with torch.no_grad():
        ref = model(x)
        logits = InferenceModel(model)(x)
        logits2, feats = InferenceModel(model, with_features=True)(x)
    torch.testing.assert_close(logits, ref["logits"])
    torch.testing.assert_close(logits2, ref["logits"])
    torch.testing.assert_close(feats, ref["features"])
    inf = InferenceModel(model)
    assert not any(k.startswith("projector") for k in inf.state_dict())
    assert inf.encoder is model.encoder and inf.num_classes == 6 and inf.feat_dim == model.feat_dim


def test_state_dict_round_trip_through_create_model():
    model = create_model("resnet20", num_classes=4, proj_dim=8, shortcut="B")
    clone = create_model(
        model.arch, num_classes=model.num_classes, proj_dim=model.proj_dim, **model.arch_kwargs
    )
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval(), clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x)["logits"], model(x)["logits"])


def test_pretrained_weights_load_strictly_and_ignore_fc(tmp_path):
    import torchvision

    reference = torchvision.models.resnet50(weights=None)  # torchvision key names, including fc.*
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet50", num_classes=3, proj_dim=8, pretrained_weights=str(path))
    assert "pretrained_weights" not in model.arch_kwargs
    torch.testing.assert_close(model.encoder.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.encoder.layer4[2].bn3.running_var, reference.layer4[2].bn3.running_var)


def test_pretrained_weights_missing_file_and_wrong_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_model("resnet20", num_classes=3, pretrained_weights=str(tmp_path / "nope.pth"))
    source = create_model("resnet20", num_classes=3)
    bad = {k: v for k, v in source.encoder.state_dict().items() if not k.startswith("layer3.2")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing key"):
        create_model("resnet20", num_classes=3, pretrained_weights=str(tmp_path / "bad.pth"))


def test_encoder_weights_from_a_rescom_checkpoint(tmp_path):
    source = create_model("resnet20", num_classes=3, proj_dim=8)
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ckpt.pt")
    target = create_model("resnet20", num_classes=5, proj_dim=4)
    load_encoder_weights(target.encoder, tmp_path / "ckpt.pt")
    torch.testing.assert_close(target.encoder.conv1.weight, source.encoder.conv1.weight)
