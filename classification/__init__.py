"""ImageNet-style classification transfer of an MAE encoder: fine-tuning, linear probe, k-NN.

The MAE paper judges an encoder first by these evaluations; they are also the cheap per-checkpoint
signal a user needs before spending GPU-days on detection and segmentation.
"""
