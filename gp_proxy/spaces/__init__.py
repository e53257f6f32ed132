"""Student search spaces, by name."""

from __future__ import annotations

from collections.abc import Callable

from primitives.errors import GpProxyError

from .base import FeatureNet, SearchSpace, SpecError, count_flops, count_params, seeded_init

__all__ = ["FeatureNet", "SearchSpace", "SpecError", "count_flops", "count_params", "get_space",
           "seeded_init", "space_names"]


def _factories() -> dict[str, Callable[[], SearchSpace]]:
    from .cifar_resnet import CifarResNetSpace
    from .fmnist_cnn import FmnistCNNSpace
    from .nb201 import NB201Space
    from .vit import AutoFormerSpace, PiTSpace

    return {"fmnist-cnn": FmnistCNNSpace, "cifar-resnet-depth": CifarResNetSpace,
            "nb201": NB201Space, "autoformer": AutoFormerSpace, "pit": PiTSpace}


def space_names() -> list[str]:
    return sorted(_factories())


def get_space(name: str, input_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None) -> SearchSpace:
    """The space ``name``, adapted to ``input_shape`` and ``num_classes`` when given."""
    factories = _factories()
    if name not in factories:
        import difflib

        close = difflib.get_close_matches(name, list(factories), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise GpProxyError(f"unknown search space {name!r}{hint}; "
                           f"choose from {', '.join(sorted(factories))}")
    space = factories[name]()
    if input_shape is None and num_classes is None:
        return space
    return space.adapt(input_shape, num_classes)
