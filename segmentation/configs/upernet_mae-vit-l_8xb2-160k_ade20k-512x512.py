# UperNet + MAE ViT-L/16 on ADE20K (MAE paper: val mIoU 53.6). Same recipe as the ViT-B config;
# blocks 7/11/15/23 feed the pyramid. drop_path 0.2 is our choice for the deeper model (the MAE
# paper's segmentation appendix does not state it); override with
# --cfg-options model.backbone.drop_path_rate=...
_base_ = ['./upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(arch='vit_large_patch16', out_indices=(7, 11, 15, 23), drop_path_rate=0.2),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024))
