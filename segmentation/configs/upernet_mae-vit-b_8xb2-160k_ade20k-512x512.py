# UperNet + MAE ViT-B/16 on ADE20K: MMSeg's MAE recipe (mae-base_upernet_8xb2-amp-160k, 48.13 mIoU;
# the MAE paper: 48.1), setting by setting in docs/recipes.md.
# 512x512 crops, 160k iterations, batch 16 (8 GPUs x 2), AdamW lr 1e-4, wd 0.05, layer decay 0.65,
# linear warm-up 1.5k iterations then poly (power 1), BEiT relative position bias + layer scale,
# drop path 0.1,
# blocks 3/5/7/11 -> strides 4/8/16/32, slide inference (512 crops, stride 341), bf16 AMP on GPU.
#
#   torchrun --nproc_per_node 8 tools/train_seg.py THIS_FILE --launcher pytorch \
#       --data-root data/ade/ADEChallengeData2016 --pretrained mae_pretrain_vit_base.pth
_base_ = [
    'mmseg::_base_/models/upernet_mae.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# Registers MAEViT, the dataset, metric, hook, optimizer constructor, runner and file backend below.
custom_imports = dict(imports=['mae_transfer.segmentation.registration'],
                      allow_failed_imports=False)
# Reads its own checkpoints on torch >= 2.6 (resume / load_from / test): segmentation/runner.py.
runner_type = 'FullCheckpointRunner'

crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MAEViT',
        arch='vit_base_patch16',
        img_size=crop_size,
        out_indices=(3, 5, 7, 11),
        drop_path_rate=0.1,
        use_rel_pos=True,
        rel_pos_type='beit',  # MMSeg's MAE: one BEiT table per block, zero init
        layer_scale_init=1.0,  # MMSeg's MAE ADE20K config: init_values=1.0
        final_norm=False,
        norm_cfg=norm_cfg,
        pretrained=None),  # or --pretrained PATH: any format backbones.load_pretrained reads
    neck=None,  # the multi-scale adapter is part of MAEViT
    decode_head=dict(in_channels=[768, 768, 768, 768], channels=768, num_classes=150,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=768, num_classes=150, norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# ADE20K, or any folder in its layout (classes.txt in the root overrides the 150 ADE classes).
train_dataloader = dict(batch_size=2, dataset=dict(type='ADELayoutDataset'))
val_dataloader = dict(batch_size=1, dataset=dict(type='ADELayoutDataset'))
test_dataloader = val_dataloader
val_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# Multi-scale + flip testing (tools/test_seg.py CONFIG CKPT --tta, or tta = True here), MMSeg 0.x's
# MAE recipe (48.13 -> 48.70 mIoU): the (2048, 512) scale times each ratio, the short side at least
# 512 (0.x min_size: every slide window a full 512 crop), with and without a horizontal flip; the
# softmax of the 12 predictions averaged. segmentation/tta.py, docs/segmentation.md.
tta = False
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_model = dict(type='AveragedSegTTAModel')
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='ResizeToRatio', scale=(2048, 512), ratio=r, min_short=512)
         for r in tta_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],  # after the resize: labels at the original size
        [dict(type='PackSegInputs')],
    ]),
]

# AMP (bf16) on GPU; tools/train_seg.py switches to a plain OptimWrapper on CPU.
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViTLayerDecayOptimizerConstructor',
    # MMSeg's MAE rule: only 1-D parameters and biases skip weight decay (tokens, pos_embed and
    # the rel-pos tables are decayed), see tools.lr_decay.
    paramwise_cfg=dict(layer_decay_rate=0.65, wd_policy='mmseg_mae'))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
default_hooks = dict(
    # backend_args: checkpoints written whole or not at all (segmentation/file_backend.py)
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3,
                    save_last=True, backend_args=dict(backend='atomic_local')))
custom_hooks = [dict(type='SegResultsJSONHook'), dict(type='FiniteLossHook')]
# The 2x8 recipe's batch; with auto_scale_lr enabled MMEngine rescales lr for other batch sizes.
auto_scale_lr = dict(enable=False, base_batch_size=16)
