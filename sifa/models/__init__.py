"""Video networks of SIFA: C2D-SIFA-ResNets, C2D-SIFA-Swin, their baselines, 2-D networks inflated with SIFA
layers (``inflate_2d``, ``timm/<name>``), weight transfer and loading."""
from . import inflate, sifa_resnet, sifa_swin, tsm_resnet  # noqa: F401  (importing registers the networks)
from .inflate import inflate_2d
from .sifa_resnet import SIFABottleneck
from .registry import check_model_config, get_model_by_name, list_models, model_entry, register_model
from .transfer import remove_defcor_weight, remove_fc, transfer_weights
from .weights import load_weights, state_dict_of

__all__ = ["inflate_2d", "check_model_config", "get_model_by_name", "list_models", "model_entry", "register_model",
           "SIFABottleneck", "remove_defcor_weight", "remove_fc", "transfer_weights", "load_weights", "state_dict_of"]
