"""Student search spaces, by name (built-ins and the user's, one registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from primitives.errors import GpProxyError

from ..core.registry import Registry
from .base import (
    FeatureAdapter,
    FeatureNet,
    SearchSpace,
    SpecError,
    count_flops,
    count_params,
    seeded_init,
    with_features,
)

__all__ = ["SPACES", "FeatureAdapter", "FeatureNet", "SearchSpace", "SpecError", "count_flops",
           "count_params", "get_space", "register_space", "seeded_init", "space_names",
           "with_features"]


def _builtins() -> None:
    from .cifar_resnet import CifarResNetSpace
    from .fmnist_cnn import FmnistCNNSpace
    from .nb201 import NB201Space
    from .vit import AutoFormerSpace, PiTSpace

    for cls in (FmnistCNNSpace, CifarResNetSpace, NB201Space, AutoFormerSpace, PiTSpace):
        SPACES.register(cls.name, cls)


#: space name -> a SearchSpace subclass (or any callable returning a SearchSpace)
SPACES: Registry[Callable[[], SearchSpace]] = Registry("search space", _builtins)


def register_space(name: str, *, replace: bool = False) -> Callable[[Any], Any]:
    """Class decorator: ``@register_space("my-space")`` on a :class:`SearchSpace` subclass
    makes it usable by name everywhere (campaigns, ``bench build``, search, distill)."""
    return SPACES.register(name, replace=replace)  # type: ignore[return-value]


def space_names() -> list[str]:
    return SPACES.names()


def get_space(name: str, input_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None) -> SearchSpace:
    """The space ``name`` (or a ``module:attr`` plug-in), adapted to ``input_shape`` and
    ``num_classes`` when given."""
    factory = SPACES.get(name)
    space = factory() if callable(factory) else factory
    if not isinstance(space, SearchSpace):
        raise GpProxyError(f"search space {name!r} is not a SearchSpace (got "
                           f"{type(space).__name__})")
    if not space.name:
        space.name = name
    if input_shape is None and num_classes is None:
        return space
    return space.adapt(input_shape, num_classes)
