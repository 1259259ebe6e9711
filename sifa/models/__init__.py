"""Video networks of SIFA (SPEC §2-7): C2D-SIFA-ResNets, C2D-SIFA-Swin, their baselines, weight transfer."""
from . import sifa_resnet, sifa_swin  # noqa: F401  (importing registers the networks)
from .registry import get_model_by_name, list_models, register_model
from .transfer import load_state_dict_logged, remove_defcor_weight, remove_fc, transfer_weights

__all__ = ["get_model_by_name", "list_models", "register_model", "load_state_dict_logged", "remove_defcor_weight",
           "remove_fc", "transfer_weights"]
