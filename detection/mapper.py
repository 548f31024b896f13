"""Detectron2's ``DatasetMapper``, with the faults only reading an image finds named in one line.

The dataset loader (``detection/datasets.py``) checks the json and every image header before
training; what only decoding the pixels finds (a truncated JPEG, a corrupt stream, a size that
changed since) surfaces here, in a data-loader worker. Detectron2 would end the run with a
traceback through its worker and train loop; ``CheckedDatasetMapper`` re-raises it as a
``DatasetError`` naming the image file (torch passes it on from the worker; its one line
survives, see ``DatasetError``), and the entry points print that line and exit with status 2.
"""
from __future__ import annotations

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.data import DatasetMapper  # noqa: E402
from detectron2.data.detection_utils import SizeMismatchError  # noqa: E402
from PIL import Image  # noqa: E402

from mae_transfer.detection.datasets import DatasetError  # noqa: E402

#: What reading an image raises for a broken file: Pillow's OSError (truncated, unidentified),
#: SyntaxError (some of its plugins), a decompression bomb, and Detectron2's size check.
IMAGE_READ_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError, SizeMismatchError)


class CheckedDatasetMapper(DatasetMapper):
    """``DatasetMapper`` (same arguments, same outputs) that names the image it cannot read, and
    that refuses RLE masks under ``instance_mask_format="polygon"`` in one line with the fix."""

    def __call__(self, dataset_dict):
        where = f"image {dataset_dict.get('file_name')} (id {dataset_dict.get('image_id')})"
        if self.is_train and self.use_instance_mask and self.instance_mask_format == "polygon":
            if any(isinstance(obj.get("segmentation"), dict) and not obj.get("iscrowd", 0)
                   for obj in dataset_dict.get("annotations", ())):
                raise DatasetError(f"{where}: has RLE masks; pass "
                                   f"dataloader.train.mapper.instance_mask_format=bitmask")
        try:
            return super().__call__(dataset_dict)
        except IMAGE_READ_ERRORS as exc:
            reason = " ".join(str(exc).split())
            raise DatasetError(f"{where}: cannot be read ({type(exc).__name__}: {reason})") from exc
