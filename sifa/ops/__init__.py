"""The SIFA operator: deformable correlation and deformable aggregation (docs/design.md §2)."""
from . import reference
from ._utils import previous_frame
from .functional import backend, cpu_capability, defagg, defcor, sifa_attention
from .modules import DefAgg, DefCorFixW

backend()  # choose (and load) the kernels now, not inside a torch.compile trace

__all__ = ["backend", "cpu_capability", "defagg", "defcor", "DefAgg", "DefCorFixW", "previous_frame", "reference",
           "sifa_attention"]
