# Tiny CPU config for tests and the README smoke run: a 4-block, 64-d ViT (vit_mini_patch16) with
# the same UperNet / FCN heads at small widths, 64x64 crops from 128 px images, 40 iterations with
# validation (slide inference) and checkpoints every 20. Trains in seconds on 2 CPU cores.
#
#   python tools/synthetic_data.py /tmp/shapes
#   python tools/train_seg.py segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py \
#       --data-root /tmp/shapes/ade/ADEChallengeData2016 --work-dir /tmp/seg_smoke
_base_ = ['./upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py']

crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='vit_mini_patch16', img_size=crop_size, out_indices=(0, 1, 2, 3),
                  drop_path_rate=0.0, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=32, pool_scales=(1, 2),
                     num_classes=3, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=16, num_classes=3, norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(48, 48)))

data_root = 'data/shapes/ade/ADEChallengeData2016'  # python tools/synthetic_data.py data/shapes
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # the dataset's reduce_zero_label=True applies
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),  # the dataset's reduce_zero_label=True applies
    dict(type='PackSegInputs'),
]
# --tta: the recipe's ratios and flip around this config's 128 px scale, short side >= the crop.
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='ResizeToRatio', scale=(128, 128), ratio=r, min_short=64)
         for r in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# The ViT-B recipe's optimizer (AdamW, wd 0.05, layer decay 0.65) at a higher lr for 40 steps; its
# bf16 AmpOptimWrapper becomes a plain fp32 OptimWrapper on CPU (tools/train_seg.py switches it).
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=5),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=5, end=40),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40, val_interval=20)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=20, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
