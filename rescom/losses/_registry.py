"""Loss registry: ``@register_loss("name")`` on a constructor, then ``create_loss("name", **kwargs)``.

The training criteria (``"rescom"``, ``"balanced_softmax"``, ``"ce"``) are all built from ONE keyword dict,
so the trainer does not need to know which method it runs. :func:`create_loss` therefore

1. drops keywords whose value is ``None`` (they mean "use the default"),
2. drops the shared ResCom hyper-parameters in :data:`SHARED_LOSS_KWARGS` that the chosen constructor does
   not take (e.g. ``temperature`` for ``"ce"``), and
3. raises ``TypeError`` for any other keyword the constructor does not take (a typo is never ignored).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["SHARED_LOSS_KWARGS", "create_loss", "list_losses", "register_loss"]

SHARED_LOSS_KWARGS = frozenset(
    {
        "class_counts",
        "dim",
        "queue_size",
        "num_positives",
        "num_negatives",
        "temperature",
        "con_weight",
        "beta",
    }
)
"""Keywords every criterion accepts through :func:`create_loss`; ignored by those that do not use them."""

_LOSSES: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_loss(name: str) -> Callable[[F], F]:
    """Register a loss constructor (class or function) under ``name``.

    Args:
        name: Registry key; registering an existing key again replaces it with a warning.

    Returns:
        A decorator returning its argument unchanged.
    """

    def decorator(fn: F) -> F:
        if name in _LOSSES and _LOSSES[name] is not fn:
            warnings.warn(
                f"loss {name!r} is registered again; {fn!r} replaces {_LOSSES[name]!r}", stacklevel=2
            )
        _LOSSES[name] = fn
        return fn

    return decorator


def list_losses() -> list[str]:
    """Sorted names of the registered losses."""
    return sorted(_LOSSES)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss by name.

    Args:
        name: One of :func:`list_losses`.
        **kwargs: Constructor keywords; ``None`` values are dropped, and shared ResCom keywords
            (:data:`SHARED_LOSS_KWARGS`) the constructor does not take are dropped too.

    Returns:
        The loss module.

    Raises:
        ValueError: If ``name`` is not registered (the message lists the valid names).
        TypeError: If a keyword outside :data:`SHARED_LOSS_KWARGS` is not accepted by the constructor.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(list_losses())}")
    fn = _LOSSES[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = sorted(set(kwargs) - accepted - SHARED_LOSS_KWARGS)
        if unknown:
            raise TypeError(
                f"loss {name!r} got unexpected keyword(s) {unknown}; it accepts {sorted(accepted)} "
                f"(and ignores the shared keywords {sorted(SHARED_LOSS_KWARGS - accepted)})"
            )
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return fn(**kwargs)
