"""Backbones for nepa-eval. `import backbones` registers the NEPA models with timm."""
from . import nepa  # noqa: F401
