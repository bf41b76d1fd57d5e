"""nepa-eval: downstream evaluation and transfer toolkit for NEPA backbones."""
__version__ = "0.1.0"
