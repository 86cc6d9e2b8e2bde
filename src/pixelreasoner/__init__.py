"""pixelreasoner: teach vision-language models to reason in pixel space."""

__version__ = "0.1.0"
