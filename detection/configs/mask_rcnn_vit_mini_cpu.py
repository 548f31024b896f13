"""Tiny Mask R-CNN that trains on a CPU in seconds: tests and the README smoke run.

The ViTDet structure at toy size: ``vit_mini_patch16`` (64-d, 4 blocks; window 4 with global
blocks 1 and 3, relative position bias), a 32-channel pyramid and heads, 128 px LSJ (scale
0.5-1.5), 2 images per iteration, 200 iterations (about 20 s on one core; on the shapes set box
and mask AP reach roughly 5-15 after 100 iterations and 25-55 after 200, depending on the initial
weights: 4 validation images make a noisy toy), evaluation and checkpoints every 100. Data: the ``custom_train`` / ``custom_val`` splits of a COCO-layout
folder, e.g. the generated shapes set:

    python tools/synthetic_data.py /tmp/shapes
    python tools/train_det.py --config detection/configs/mask_rcnn_vit_mini_cpu.py \
        --dataset custom=/tmp/shapes/coco train.output_dir=/tmp/det_smoke \
        train.init_checkpoint=/path/to/vit_mini_encoder.safetensors   # optional

For other data set ``model.roi_heads.num_classes`` to its number of categories.
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .common.coco_lsj import dataloader
from .common.mask_rcnn_vitdet import model
from .common.recipe import optimizer, step_schedule, train

IMAGE_SIZE = 128
CHANNELS = 32

_net = model.backbone.net
_net.update(name="vit_mini_patch16", img_size=IMAGE_SIZE, drop_path_rate=0.0, window_size=4,
            global_blocks=[1, 3])
model.backbone.out_channels = CHANNELS
model.backbone.square_pad = IMAGE_SIZE

_rpn = model.proposal_generator
_rpn.head.conv_dims = [-1]
_rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
_rpn.batch_size_per_image = 64
_rpn.pre_nms_topk, _rpn.post_nms_topk = (400, 200), (100, 50)

_heads = model.roi_heads
_heads.num_classes = 3
_heads.batch_size_per_image = 64
_heads.box_head.conv_dims, _heads.box_head.fc_dims = [CHANNELS] * 2, [64]
_heads.mask_head.conv_dims = [CHANNELS] * 3

dataloader.train.dataset.names = "custom_train"
dataloader.test.dataset.names = "custom_val"
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.5, max_scale=1.5, target_height=IMAGE_SIZE,
                     target_width=IMAGE_SIZE),
    L(T.FixedSizeCrop)(crop_size=(IMAGE_SIZE, IMAGE_SIZE), pad=False),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

optimizer.lr = 2e-3
train.max_iter = 200
lr_multiplier = step_schedule(train.max_iter, warmup_iters=10)
# One thread: this model is bound by per-op overhead, and more threads only compete for the cores.
train.update(output_dir="./output/det_mini_cpu", device="cpu", cpu_threads=1, seed=0,
             eval_period=100, log_period=10, checkpointer=dict(period=100, max_to_keep=3))
train.amp.enabled = False
