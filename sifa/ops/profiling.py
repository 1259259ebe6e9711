"""Layout copies inside the SIFA op calls, as torch's profiler records them (docs/layers.md)."""
from __future__ import annotations

from typing import Callable


def layout_copies(fn: Callable[[], object]) -> list[tuple[str, tuple[int, ...]]]:
    """Runs ``fn`` under the profiler and returns (op, shape) for every copy of a 5-D tensor (features, their
    gradient or offsets: a layout copy) made inside a ``sifa::`` op call, forward or backward. Empty when
    the features and offsets reach the ops in the kernels' working layout (``torch.channels_last_3d``).

    The copies the ops' host code makes (``.contiguous()``, ``permute(...).contiguous()``, ``.to(format)``)
    all end in ``aten::copy_``, recorded with its destination's shape under the op's event."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    found = []
    for event in prof.events():
        if event.name != "aten::copy_" or not event.input_shapes or len(event.input_shapes[0]) != 5:
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("sifa::"):
            parent = parent.cpu_parent
        if parent is not None:
            found.append((parent.name, tuple(event.input_shapes[0])))
    return found
