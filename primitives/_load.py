"""Import the op modules once, in a fixed order, to populate the registry."""

from . import distances, elementwise, inputs, instinct, transforms  # noqa: F401
