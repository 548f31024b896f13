"""``ADELayoutDataset``: ADE20K, and any folder of images + label PNGs in the ADE20K layout.

Layout: ``<root>/images/{training,validation}/*.jpg`` and ``<root>/annotations/{...}/*.png``
(8-bit labels, 0 = "other", classes 1..K), i.e. what ``tools.annotated_sets`` writes. As MMSeg
does for ADE20K, label 0 is ignored (``reduce_zero_label=True``) and class k is trained as k - 1.

Why not MMSeg's ``ADE20KDataset`` directly: its class list is fixed to ADE's 150 names, and giving
other names makes MMSeg build a label map by *name* from the 150, which fails for any other set.
This class has no fixed list: it reads ``<root>/classes.txt`` (one name a line, class 1 first;
``tools.annotated_sets`` writes it) when present, and otherwise uses ADE20K's 150 classes and
palette, so on the real ADE20K it behaves exactly like ``ADE20KDataset``.
"""
from __future__ import annotations

import os.path as osp
from typing import List, Optional

from mae_transfer.segmentation import compat

# mmseg.datasets imports mmcv.ops at import time, which needs mmcv._ext: on mmcv-lite only the
# stand-in that setup() installs lets it import.
compat.setup()
from mmseg.datasets import ADE20KDataset, BaseSegDataset  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402

from mae_transfer.segmentation.data_checks import check_pairs

CLASSES_FILE = "classes.txt"


def read_class_names(data_root: Optional[str]) -> Optional[List[str]]:
    """Class names from ``<data_root>/classes.txt``, or None where the file is absent."""
    if not data_root:
        return None
    path = osp.join(data_root, CLASSES_FILE)
    if not osp.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no class names")
    return names


def dataset_metainfo(data_root: Optional[str]) -> dict:
    """``classes`` (+ ``palette`` for ADE20K) of the set at ``data_root``."""
    names = read_class_names(data_root)
    if names is None:
        return {"classes": tuple(ADE20KDataset.METAINFO["classes"]),
                "palette": list(ADE20KDataset.METAINFO["palette"])}
    return {"classes": tuple(names)}


@DATASETS.register_module()
class ADELayoutDataset(BaseSegDataset):
    """See the module docstring. Arguments are ``BaseSegDataset``'s; ADE's suffixes by default.

    ``check_files``: read every image's and label map's header when listing them (about 1 ms a
    file): an unreadable file, a colour label map or a size mismatch is one line naming it,
    before the first iteration (``segmentation.data_checks``).
    """

    METAINFO: dict = {}

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = True, metainfo: Optional[dict] = None,
                 data_root: Optional[str] = None, check_files: bool = True, **kwargs) -> None:
        self.check_files = check_files
        metainfo = dict(metainfo or {})
        if "classes" not in metainfo:
            metainfo.update(dataset_metainfo(data_root))
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, metainfo=metainfo,
                         data_root=data_root, **kwargs)

    def load_data_list(self) -> List[dict]:
        """MMSeg's listing, with one-line errors naming the folder / image / file instead of crashes
        later."""
        img_dir = self.data_prefix.get("img_path", "")
        ann_dir = self.data_prefix.get("seg_map_path", "")
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f"no image folder {img_dir} (expected the ADE20K layout "
                                    f"<root>/images/{{training,validation}}/*{self.img_suffix})")
        data_list = super().load_data_list()
        if not data_list:
            raise ValueError(f"no *{self.img_suffix} images in {img_dir}")
        if ann_dir:
            unlabelled = [d["img_path"] for d in data_list if not osp.isfile(d["seg_map_path"])]
            if unlabelled:
                raise FileNotFoundError(
                    f"{len(unlabelled)} images in {img_dir} have no label map in {ann_dir}, "
                    f"e.g. {osp.basename(unlabelled[0])} (expected "
                    f"{osp.splitext(osp.basename(unlabelled[0]))[0]}{self.seg_map_suffix})")
        if self.check_files:
            check_pairs(data_list)
        return data_list
