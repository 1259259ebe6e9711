"""Channels-last execution of the C2D ResNets (``net.set_channels_last()``; the config's ``channels_last``).

The SIFA op's kernels work on channels-last features (N×T×H×W×C, cuda_sifa/csrc/ops/sifa.h): NCTHW-contiguous
features cost it a copy into that layout and one back for each call, forward and backward. A network whose
convolution weights and input clip are in ``torch.channels_last_3d`` computes every feature map in that layout,
so the SIFA blocks hand the op its working layout, and conv_offset's channels-last offsets, which the op reads
in place: no layout copy per SIFA call. The parameters keep their shapes and values (state dicts and
checkpoints are the same either way); only the strides of the convolution weights change.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class ChannelsLast:
    """The networks' switch, as :class:`~sifa.models.checkpointing.GradCheckpointing`'s:
    ``net.set_channels_last()`` puts the 3-D convolution weights in ``torch.channels_last_3d``, and
    :meth:`memory_format_input` gives the clip the same layout in the forward."""

    channels_last = False

    def set_channels_last(self, enable: bool = True) -> None:
        memory_format = torch.channels_last_3d if enable else torch.contiguous_format
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv3d):
                    module.weight.data = module.weight.data.contiguous(memory_format=memory_format)
        self.channels_last = enable

    def memory_format_input(self, x: Tensor) -> Tensor:
        """``x`` in the network's layout: channels_last_3d when the switch is on (one copy of the clip, unless it
        comes so), else as given."""
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last and x.dim() == 5 else x


def default_channels_last(device: Optional[torch.device]) -> bool:
    """The value of ``channels_last: null``: on for CUDA; on the CPU, see docs/benchmarks.md."""
    return device is not None and torch.device(device).type == "cuda"
