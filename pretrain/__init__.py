"""MAE pretraining of the shared ViT (He et al. 2021).

- ``pretrain.model``: ``MaskedAutoencoderViT`` (a ``backbones.VisionTransformer`` plus MAE's
  decoder, official parameter names), ``build_mae``, ``MAE_MODELS``;
- ``pretrain.masking``: patchify / unpatchify, random masking, the masked-patch loss;
- ``pretrain.data``: recursive image folder, RandomResizedCrop + flip, resumable sampler;
- ``pretrain.engine`` / ``pretrain.main``: the training loop and the entry point
  (``python -m mae_transfer.pretrain.main``, or ``tools/pretrain.sh`` through torchrun);
- ``pretrain.checkpoint``: atomic, plain-data training checkpoints;
- ``pretrain.visualize`` / ``pretrain.restore``: reconstruction pictures from any MAE checkpoint.
"""
