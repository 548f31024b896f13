"""The shared ViT and the pieces that turn it into detection and segmentation backbones.

Framework-free: imports neither Detectron2 nor MMSegmentation.
"""
from mae_transfer.backbones.vit import VIT_ARCHS, VisionTransformer, build_vit
from mae_transfer.backbones.checkpoint_reader import load_pretrained

__all__ = ["VIT_ARCHS", "VisionTransformer", "build_vit", "load_pretrained"]
