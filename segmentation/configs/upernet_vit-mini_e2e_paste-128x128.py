# UperNet for the end-to-end CPU run (tools/e2e.py): the tiny CPU config on the pasted real-photo
# set (8 classes from classes.txt, 160 px images, 128 px crops). Its own file so that the MAE-init
# and random-init runs share one recipe; tools/e2e.py sets the iteration count
# (train_cfg.max_iters, the poly schedule's end and the checkpoint interval).
_base_ = ['./upernet_vit-mini_1xb4-40it_shapes-64x64.py']

crop_size = (128, 128)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(96, 96)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(160, 160), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# --tta: the recipe's ratios and flip around this config's 160 px scale, short side >= the crop.
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='ResizeToRatio', scale=(160, 160), ratio=r, min_short=128)
         for r in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3), paramwise_cfg=dict(layer_decay_rate=0.7))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=20, end=400),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400, val_interval=400)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=400, max_keep_ckpts=1))
