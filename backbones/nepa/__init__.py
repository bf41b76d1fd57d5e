"""The NEPA backbone: model, pretraining objective, checkpoint door; timm/mmseg adapters register lazily."""
from .checkpoint import (CheckpointError, CheckpointReads, LoadReport, fold_layerscale, load_state_dict_into, load_weights,
                         read_checkpoint, register_safe_globals, save_checkpoint)
from .model import SIZES, NepaConfig, NepaViT, nepa_vit

from_pretrained = NepaViT.from_pretrained  # any checkpoint the door reads -> the NEPA model it describes
from .objective import NepaObjective, nepa_loss

__all__ = ["NepaConfig", "NepaViT", "nepa_vit", "SIZES", "NepaObjective", "nepa_loss", "from_pretrained",
           "load_weights", "load_state_dict_into", "read_checkpoint", "save_checkpoint", "fold_layerscale",
           "CheckpointError", "CheckpointReads", "LoadReport", "register_safe_globals"]

try:  # registering into timm is a side effect users expect from `import backbones`
    from . import timm_models  # noqa: F401
except ImportError:  # timm absent: the core still works
    pass
