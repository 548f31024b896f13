"""Command-line config overrides checked against the config: a typo is one line, never a no-op.

Why: both frameworks' override mechanisms add any key they are given. Detectron2's
``LazyConfig.apply_overrides`` turned ``train.max_iters=3`` into a new key that nothing reads (the
run trained the config's 200 iterations), and MMEngine's ``merge_from_dict`` does the same for
``--cfg-options``. A misspelt keyword argument of a constructor (``num_clases``) or a word where a
number belongs (``max_iter=abc``) ended minutes later in a ``TypeError`` traceback.

The rule, shared by ``tools/train_det.py`` / ``tools/demo_det.py`` (``detection.config_overrides``)
and ``tools/train_seg.py`` / ``tools/test_seg.py`` (``segmentation.config_overrides``):

- every part of a dotted key must exist in the config (list items by their index), except where
  the node legitimately takes new keys: the framework's walker says which (``new_keys``), e.g. the
  parameters of the callable a Detectron2 ``LazyCall`` node or an MMEngine ``type=`` dict builds
  (``accepted_parameters``);
- a key that exists keeps its kind of value: a number stays a number, true/false stays a bool;
- ``+key=value`` (Hydra's syntax for "add this key") adds a key on purpose, unchecked.

A refusal is an ``OverrideError`` whose message is one line: the override, the node, the closest
existing key (difflib), and the ``+`` form where adding is possible.
"""
from __future__ import annotations

import difflib
import inspect
from numbers import Number
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Set

#: Prefix of an override that adds a new key on purpose (Hydra's override grammar).
ADD_PREFIX = "+"

#: ``new_keys(node, path)``: the keys ``node`` (at dotted ``path``, ``[]`` for the root) may gain;
#: None where any key is allowed (a callable taking ``**kwargs``; an unknown ``type``).
NewKeys = Callable[[Mapping, List[str]], Optional[Iterable[str]]]


class OverrideError(ValueError):
    """An override that names no config key, or gives a value of the wrong kind (one line)."""


def closest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate most like ``name`` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(name, sorted(set(map(str, candidates))), n=1, cutoff=0.6)
    return found[0] if found else None


def accepted_parameters(target: Any) -> Optional[Set[str]]:
    """Keyword arguments ``target`` (a class or function) accepts; None where it takes any.

    For a class, ``__init__`` is followed up the MRO while it passes ``**kwargs`` on (as
    Detectron2's heads and MMEngine's modules do); where ``**kwargs`` would reach ``object`` or
    ``torch.nn.Module``, they evidently go elsewhere, so any key is accepted.
    """
    if inspect.isclass(target):
        names: Set[str] = set()
        for klass in target.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            if klass is object or klass.__module__.startswith("torch.nn"):
                return None  # **kwargs not consumed by the classes above: cannot tell
            params = _parameters(init)
            if params is None:
                return None
            names |= {p.name for p in params if p.kind not in _VARIADIC} - {"self"}
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                return names
        return None
    params = _parameters(target)
    if params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind not in _VARIADIC}


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _parameters(func) -> Optional[Sequence[inspect.Parameter]]:
    try:
        return list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return None


def check_value_kind(key: str, old: Any, new: Any) -> None:
    """Refuse a value of another kind than the config's: a number for a number, a bool for a bool
    (None is always accepted: "unset")."""
    if new is None or old is None:
        return
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise OverrideError(f"override {key}={new!r}: {key} is true/false (the config has "
                                f"{old}), not {new!r}")
    elif isinstance(old, Number):
        if isinstance(new, bool) or not isinstance(new, Number):
            raise OverrideError(f"override {key}={new!r}: {key} is a number (the config has "
                                f"{old!r}), not {new!r}")


def check_override(root: Mapping, key: str, value: Any, new_keys: NewKeys,
                   describe: Callable[[Mapping], str] = lambda node: "") -> None:
    """Raise ``OverrideError`` unless ``key=value`` overrides (or may add) a key of ``root``.

    ``root``: the config as plain dicts and lists. ``describe(node)``: a short note on what a node
    builds (e.g. ``" (StandardROIHeads)"``), for the message.
    """
    node: Any = root
    path: List[str] = []
    for part in key.split("."):
        where = ".".join(path) or "the config"
        if isinstance(node, Mapping):
            if part not in node:
                allowed = new_keys(node, path)
                if allowed is None or part in allowed:
                    return  # a new key the node takes: nothing below it to check
                # A node that builds something takes only its callable's parameters: no "+".
                label = describe(node)
                raise _unknown(key, value, where + label, part, list(node) + list(allowed), path,
                               can_add=not label)
            node = node[part]
        elif isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                items = (f"a list of {len(node)} items; name one by its index "
                         f"0..{len(node) - 1}" if node else "an empty list")
                raise OverrideError(f"override {key}: {where} is {items}")
            node = node[int(part)]
        else:
            raise OverrideError(f"override {key}: {where} is a single value ({node!r}), not a "
                                f"group of keys")
        path.append(part)
    check_value_kind(key, node, value)


def _unknown(key, value, where, part, candidates, path, can_add) -> OverrideError:
    match = closest(part, candidates)
    prefix = ".".join(path + [""])
    hint = f"did you mean {prefix}{match}?" if match else "no key is close"
    add = f"; to add it anyway write {ADD_PREFIX}{key}={value}" if can_add else ""
    return OverrideError(f"override {key}={value}: {where} has no key '{part}' ({hint}){add}")


def split_added(key: str) -> tuple:
    """``("a.b", True)`` for ``"+a.b"`` (add on purpose, unchecked), ``("a.b", False)`` otherwise."""
    if key.startswith(ADD_PREFIX):
        return key[len(ADD_PREFIX):], True
    return key, False
