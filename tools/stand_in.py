"""Stand-in modules for missing compiled extensions (``detectron2._C``, ``mmcv._ext``).

Both frameworks import their C++ extension at module level even where only a few ops (deformable
conv, rotated boxes, ...) need it. The stand-in lets everything import; calling any of its ops
raises a ``RuntimeError`` that says which op and why. It is installed only when the real extension
cannot be found, so a compiled build always wins.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        module = self.__name__

        def missing_op(*args, **kwargs):
            raise RuntimeError(
                f"{module}.{name} needs the compiled extension {module}, which this install does "
                f"not have (pure-Python build). Install a compiled build to use this op.")

        missing_op.__name__ = name
        return missing_op


def install_stand_in(module_name: str) -> bool:
    """Register a stand-in for ``module_name`` unless the real one exists; True if installed."""
    if module_name in sys.modules:
        return False
    try:
        if importlib.util.find_spec(module_name) is not None:
            return False
    except (ImportError, ValueError):
        pass
    stand_in = _StandIn(module_name)
    # A spec with no loader: probes such as mmengine's is_mmcv_full() read it as "not compiled"
    # instead of crashing on a module without __spec__.
    stand_in.__spec__ = importlib.machinery.ModuleSpec(module_name, loader=None)
    stand_in.__mae_transfer_stand_in__ = True
    sys.modules[module_name] = stand_in
    parent, _, child = module_name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, stand_in)
    return True


def is_stand_in(module_name: str) -> bool:
    """True when ``module_name`` is loaded and is our stand-in (not the compiled extension)."""
    return getattr(sys.modules.get(module_name), "__mae_transfer_stand_in__", False)
