"""Shared library code (checkpoints, position embeddings, layer-wise lr decay) and entry points.

Framework-free: nothing here imports Detectron2 or MMSegmentation, so the pretraining, detection and
segmentation code can all depend on it.
"""
