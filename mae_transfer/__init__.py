"""mae-transfer: one ViT from MAE pretraining to Detectron2 detection and MMSeg segmentation.

The install exposes this one import name (``mae_transfer.backbones``, ``.pretrain``, ``.detection``,
``.segmentation``, ``.classification``, ``.tools``, ``.experiment``), like timm, detectron2 and
mmseg, so that generic names such as ``tools`` or ``detection`` never land on a user's import
path. The folders themselves stay at the top of the repository: ``setup.py`` maps them under this
package for regular, editable and wheel installs, and in a source checkout that is used without
installing (the ``tools/`` scripts, ``PYTHONPATH=<checkout>``) the lines below let this package
find them beside it.
"""
import os as _os

#: the subpackages, in the order the imports run (backbones <- tools <- stages <- experiment)
SUBPACKAGES = ("backbones", "tools", "pretrain", "detection", "segmentation", "classification",
               "experiment")

__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "backbones"))
        and _os.path.isfile(_os.path.join(_checkout, "backbones", "__init__.py"))):
    # A source checkout: the subpackages are the top-level folders beside this one.
    __path__.append(_checkout)  # noqa: F821  (a package's module-level name)
