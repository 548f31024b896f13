"""MMEngine ``--cfg-options`` checked before ``Config.merge_from_dict`` (which adds any key).

Each option goes through ``tools.overrides.check_override`` (one-line ``OverrideError`` naming the
closest key). Which nodes may gain keys:

- a dict with ``type=``: the parameters of the class or function its registry builds (an MMSeg
  head's ``num_classes``, a hook's ``interval``); an unknown ``type`` takes any key;
- a ``*_dataloader`` dict: ``torch.utils.data.DataLoader``'s parameters (the Runner passes them
  on), plus ``sampler`` / ``batch_sampler`` / ``dataset``;
- the top level: ``Runner``'s parameters, and the few keys read from the config itself
  (``compile``, ``tta``: ``tools/train_seg.py``; ``activation_checkpointing``: ``Runner.train``);
- any other plain dict (``env_cfg``, ``model.test_cfg``): only its keys.

``+key=value`` adds a key on purpose, unchecked (the ``+`` is dropped before merging).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Set

from mae_transfer.tools.overrides import accepted_parameters, check_override, split_added

#: Top-level keys read beyond the Runner's parameters (by the entry points, or by
#: ``Runner.train`` from its config).
ENTRY_KEYS = {"compile", "runner_type", "activation_checkpointing", "efficient_conv_bn_eval",
              "tta"}
LOADER_KEYS = {"dataset", "sampler", "batch_sampler", "collate_fn"}


def _registered(type_name) -> Optional[object]:
    """The class / function a ``type=`` names, looked up in MMSeg's registries (scope mmseg)."""
    if not isinstance(type_name, str):
        return type_name if callable(type_name) else None
    import mmseg.registry as registries
    from mmengine.registry import Registry, init_default_scope

    init_default_scope("mmseg")
    for registry in vars(registries).values():
        if isinstance(registry, Registry):
            found = registry.get(type_name)
            if found is not None:
                return found
    return None


def _runner_keys() -> Set[str]:
    from mmengine.runner import Runner

    return (accepted_parameters(Runner) or set()) | ENTRY_KEYS


def _new_keys(node: Mapping, path: List[str]):
    if not path:
        return _runner_keys()
    if len(path) == 1 and path[0].endswith("_dataloader"):
        from torch.utils.data import DataLoader

        return (accepted_parameters(DataLoader) or set()) | LOADER_KEYS
    if "type" not in node:
        return ()
    built = _registered(node["type"])
    return None if built is None else accepted_parameters(built)


def _describe(node: Mapping) -> str:
    type_name = node.get("type")
    if type_name is None:
        return ""
    return f" ({getattr(type_name, '__name__', type_name)})"


def checked_options(cfg, options: Mapping) -> dict:
    """``options`` (``DictAction``'s dict) with each key checked against ``cfg``; ``+`` keys are
    passed on without their ``+``. Raises ``OverrideError`` (one line)."""
    root = cfg.to_dict()
    checked = {}
    for key, value in options.items():
        key, added = split_added(key)
        if not added:
            check_override(root, key, value, _new_keys, _describe)
        checked[key] = value
    return checked
