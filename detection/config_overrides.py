"""Detectron2 LazyConfig overrides (``key=value`` after the flags), checked before they apply.

``LazyConfig.apply_overrides`` adds any key it is given; ``load_config`` first checks each
override with ``tools.overrides.check_override`` (one-line ``OverrideError`` naming the closest
key). Which nodes may gain keys: a ``LazyCall`` node (one with ``_target_``) holds only the
keyword arguments a config chose to pass, so any parameter of its ``_target_`` is a legitimate new
key, and anything else a typo (``model.roi_heads.num_clases``); a plain dict (``train``,
``dataloader``) has all its keys already. ``+key=value`` adds a key on purpose (Hydra's syntax).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.config import LazyConfig  # noqa: E402
from detectron2.utils.registry import locate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from mae_transfer.tools.overrides import (OverrideError, accepted_parameters,  # noqa: E402
                                          check_override)


def _target(node: Mapping):
    target = node.get("_target_")
    if isinstance(target, str):
        try:
            return locate(target)
        except Exception:  # an unimportable target: instantiate reports it
            return None
    return target


def _new_keys(node: Mapping, path: List[str]):
    if "_target_" not in node:
        return ()  # a plain dict: its keys are all there is
    target = _target(node)
    return None if target is None else accepted_parameters(target)


def _describe(node: Mapping) -> str:
    target = _target(node) if "_target_" in node else None
    return f" ({getattr(target, '__name__', target)})" if target is not None else ""


def _parse(overrides: Sequence[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:  # hydra's grammar errors: their first line says what is wrong
        raise OverrideError(f"cannot parse the overrides {' '.join(overrides)}: "
                            f"{str(exc).strip().splitlines()[0]}") from None


def check_overrides(cfg, overrides: Sequence[str]) -> None:
    """Raise ``OverrideError`` for the first override that names no key or has a wrong kind."""
    root = OmegaConf.to_container(cfg, resolve=False)
    for override in _parse(overrides):
        if override.is_add():
            continue
        check_override(root, override.key_or_group, override.value(), _new_keys, _describe)


def load_config(path: str, overrides: Optional[Sequence[str]] = None):
    """``LazyConfig.load(path)`` with the checked ``overrides`` applied."""
    cfg = LazyConfig.load(path)
    overrides = list(overrides or [])
    check_overrides(cfg, overrides)
    return LazyConfig.apply_overrides(cfg, overrides)
