"""Class counts: what the data (or a checkpoint) holds against what the heads predict.

Why a check before anything runs: a head with fewer outputs than the data has classes trains
until the loss meets a label it has no output for (``IndexError: Target 4 is out of bounds``,
minutes into the run), and evaluates silently wrong (IoUMetric averages over the data's classes).
A folder in the ADE20K layout without ``classes.txt`` *is* ADE20K to ``ADELayoutDataset`` (150
classes), so the tiny 3-class config pointed at such a folder is the common way to get there.
"""
from __future__ import annotations

import os.path as osp
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from mmseg.registry import DATASETS

from mae_transfer.segmentation.datasets import CLASSES_FILE, ADELayoutDataset, dataset_metainfo, read_class_names

HEAD_KEYS = ("decode_head", "auxiliary_head")


def head_cfgs(model_cfg: Mapping) -> List[Tuple[str, dict]]:
    """``(config key, head dict)`` of every decode / auxiliary head (lists of heads unrolled)."""
    found = []
    for key in HEAD_KEYS:
        head = model_cfg.get(key)
        if isinstance(head, list):
            found += [(f"{key}.{i}", h) for i, h in enumerate(head)]
        elif isinstance(head, dict):
            found.append((key, head))
    return found


def dataset_classes(ds_cfg: Mapping) -> Optional[Tuple[Tuple[str, ...], str]]:
    """The class names a dataset config will have, and where they come from (None: unknown, e.g.
    a missing folder)."""
    names = (ds_cfg.get("metainfo") or {}).get("classes")
    if names:
        return tuple(names), "the config's metainfo"
    ds_type = ds_cfg.get("type")
    if ds_type in ("ADELayoutDataset", ADELayoutDataset):
        root = ds_cfg.get("data_root")
        if root and not osp.isdir(root):
            return None  # unknown: the dataset says so itself, naming the folder
        names = read_class_names(root)
        if names is not None:
            return tuple(names), CLASSES_FILE
        return dataset_metainfo(None)["classes"], f"ADE20K's, as the folder has no {CLASSES_FILE}"
    cls = DATASETS.get(ds_type) if isinstance(ds_type, str) else ds_type
    names = getattr(cls, "METAINFO", {}).get("classes") if cls is not None else None
    return (tuple(names), f"{getattr(cls, '__name__', ds_type)}'s") if names else None


def _preview(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def check_num_classes(datasets: Iterable[Mapping], model_cfg: Mapping) -> None:
    """Raise ``ValueError`` (one line naming the override) where a head's ``num_classes`` differs
    from a dataset's class count."""
    heads = head_cfgs(model_cfg)
    for ds in datasets:
        found = dataset_classes(ds)
        if found is None:
            continue
        names, source = found
        wrong = [(key, h) for key, h in heads if h.get("num_classes") != len(names)]
        if not wrong:
            continue
        root = ds.get("data_root") or "(no data_root)"
        override = " ".join(f"model.{key}.num_classes={len(names)}" for key, _ in heads)
        raise ValueError(
            f"the data at {root} has {len(names)} classes ({source}: {_preview(names)}) but "
            f"{wrong[0][1].get('type', wrong[0][0])} predicts {wrong[0][1].get('num_classes')}: "
            f"pass --cfg-options {override}, or list the classes in {root}/{CLASSES_FILE}")


def checkpoint_num_classes(state_dict: Mapping, model_cfg: Mapping) -> dict:
    """``{head key: classes its classifier (``conv_seg``) predicts}`` read off checkpoint weights."""
    counts = {}
    for key, _ in head_cfgs(model_cfg):
        weight = state_dict.get(f"{key}.conv_seg.weight")
        if weight is not None:
            counts[key] = int(weight.shape[0])
    return counts
