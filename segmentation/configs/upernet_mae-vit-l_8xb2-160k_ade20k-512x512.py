# UperNet + MAE ViT-L/16 on ADE20K (MAE paper: val mIoU 53.6). The ViT-B recipe with BEiT's ViT-L
# settings: the MAE paper (appendix A.4) fine-tunes "following the semantic segmentation code of
# BEiT" and searches the lr per entry (values not published); MMSeg has no MAE ViT-L config.
# BEiT's ViT-L UperNet configs (microsoft/unilm beit/semantic_segmentation/configs/beit/upernet/
# upernet_beit_large_24_{512,640}_slide_160k_ade20k.py) use lr 2e-5, layer decay 0.95 over 24
# blocks, drop path 0.2, wd 0.05, blocks 7/11/15/23. With 0.95 block i learns at 0.95^(24-i) of
# the head's lr (block 0: 0.292, embeddings: 0.277); the B recipe's 0.65 would leave blocks 0-11
# at <= 0.37% of it. Sources and every difference: docs/recipes.md.
_base_ = ['./upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(arch='vit_large_patch16', out_indices=(7, 11, 15, 23), drop_path_rate=0.2),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024))

# BEiT's ViT-L values (see above); MMSeg's MAE weight-decay rule (wd_policy) is inherited.
optim_wrapper = dict(optimizer=dict(lr=2e-5), paramwise_cfg=dict(layer_decay_rate=0.95))
