"""Mask R-CNN for the end-to-end CPU run (``tools/e2e.py``): the tiny CPU config on the pasted
real-photo set (8 classes, 160 px images, 128 px training crops).

Why its own file: the e2e run compares MAE init against random init with everything else fixed,
so the recipe lives in one place instead of in a long list of command-line overrides. The
iteration count is still set by ``tools/e2e.py`` (``train.max_iter=N``; the step schedule's
milestones are fractions of it).
"""
from .mask_rcnn_vit_mini_cpu import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.num_classes = 8
dataloader.train.dataset.names = "paste_train"
dataloader.test.dataset.names = "paste_val"
# 5e-4, not the tiny CPU config's 2e-3: on this set both initialisations learn better at it
# (seed 0, 1200 iterations: box AP random 1.4 -> 3.0, MAE 2.6 -> 3.5).
optimizer.lr = 5e-4
optimizer.params.layer_decay = 0.7
train.update(output_dir="./output/det_e2e", max_iter=600, eval_period=600, log_period=20,
             checkpointer=dict(period=600, max_to_keep=1))
