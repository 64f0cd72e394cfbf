"""Encoder registry and :func:`create_model`.

An *encoder* is an ``nn.Module`` mapping images ``[N, 3, H, W]`` to features ``[N, D]`` and exposing
``feat_dim`` (D). :func:`create_model` wraps a registered encoder into a :class:`ResComModel` with the
projection MLP (D -> D -> d) and the linear classifier (D -> C).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rescom.models.rescom_model import ResComModel

__all__ = ["register_model", "create_model", "list_models", "load_encoder_weights"]

EncoderBuilder = Callable[..., nn.Module]

_MODELS: dict[str, EncoderBuilder] = {}


def register_model(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator registering an encoder builder under ``name``.

    The builder takes keyword arguments only and returns an ``nn.Module`` with a ``feat_dim`` (D) attribute
    whose forward maps ``[N, 3, H, W]`` to ``[N, D]``. Registering a name twice replaces the first builder
    and warns.

    Args:
        name: architecture name used by :func:`create_model` (e.g. ``"resnet32"``).

    Returns:
        The decorator, which returns the builder unchanged.
    """

    def decorator(fn: EncoderBuilder) -> EncoderBuilder:
        if name in _MODELS and _MODELS[name] is not fn:
            warnings.warn(f"model {name!r} is registered twice; the later definition wins", stacklevel=2)
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_MODELS)


def create_model(
    arch: str,
    num_classes: int,
    proj_dim: int = 128,
    pretrained_weights: str | Path | None = None,
    **kwargs: Any,
) -> ResComModel:
    """Build a :class:`ResComModel` (encoder + projector + classifier).

    Args:
        arch: a name from :func:`list_models`.
        num_classes: number of classes C (>= 1).
        proj_dim: contrastive embedding size d (>= 1).
        pretrained_weights: optional LOCAL file with encoder weights (e.g. torchvision's ImageNet
            ``resnet50-*.pth``); see :func:`load_encoder_weights`. Nothing is ever downloaded.
        **kwargs: architecture options (e.g. ``shortcut="B"`` for the CIFAR ResNets). ``None`` values are
            dropped so that config files can leave options unset. The remaining ones are stored in
            ``model.arch_kwargs`` (the checkpoint's ``meta.arch_kwargs``).

    Returns:
        ``ResComModel`` whose forward returns ``dict(logits=[N, C], embedding=[N, d], features=[N, D])``.

    Raises:
        ValueError: unknown ``arch``, unsupported option, or invalid sizes.
        FileNotFoundError: ``pretrained_weights`` does not exist.
    """
    if arch not in _MODELS:
        raise ValueError(f"unknown model arch {arch!r}; available: {', '.join(list_models())}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes (C) must be an integer >= 1, got {num_classes!r}")
    if isinstance(proj_dim, bool) or int(proj_dim) != proj_dim or proj_dim < 1:
        raise ValueError(f"proj_dim (d) must be an integer >= 1, got {proj_dim!r}")
    arch_kwargs = {k: v for k, v in kwargs.items() if v is not None}
    builder = _MODELS[arch]
    _check_kwargs(arch, builder, arch_kwargs)
    encoder = builder(**arch_kwargs)
    feat_dim = int(encoder.feat_dim)
    if pretrained_weights is not None:
        load_encoder_weights(encoder, pretrained_weights)
    return ResComModel(
        encoder,
        feat_dim=feat_dim,
        num_classes=int(num_classes),
        proj_dim=int(proj_dim),
        arch=arch,
        arch_kwargs=arch_kwargs,
    )


def _check_kwargs(arch: str, builder: EncoderBuilder, kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {arch!r} got unsupported option(s) {unknown}; allowed: {', '.join(allowed) or 'none'}"
        )


def load_encoder_weights(
    encoder: nn.Module,
    path: str | Path,
    ignore_prefixes: Iterable[str] = ("fc.",),
) -> None:
    """Load encoder weights from a local file, strictly (every encoder key must be present and match).

    Accepted files (loaded with ``weights_only=True``): a plain ``state_dict`` (torchvision's released
    ImageNet weights), or a dict holding it under ``"state_dict"`` or ``"model"`` (e.g. a ResCom checkpoint,
    whose ``encoder.`` keys are used). A ``module.`` prefix (DataParallel/DDP) is stripped, and keys under
    ``ignore_prefixes`` (the ImageNet ``fc`` layer) are dropped.

    Args:
        encoder: the module to fill in place.
        path: local file path.
        ignore_prefixes: key prefixes dropped before loading.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no state dict, or its keys/shapes do not match the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained_weights file not found: {path} (weights are never downloaded; pass a local .pth file, "
            "e.g. torchvision's resnet50-0676ba61.pth)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    prefixes = tuple(ignore_prefixes)
    state = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path} does not match the encoder ({type(encoder).__name__}): "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}, "
            f"{len(wrong_shape)} shape mismatch(es) {wrong_shape[:5]}"
        )
    encoder.load_state_dict(state, strict=True)
