# NEPA-B + Feature2Pyramid + UPerNet + auxiliary FCN: mmseg's MAE UPerNet model with the NEPA backbone.
# Inherits mmseg's own model file; only the backbone (and the widths it implies) change.
_base_ = ['mmseg::_base_/models/upernet_mae.py']

# our modules, imported by mmseg's tools/train.py and tools/test.py as well as by `nepa-eval seg`;
# a config that adds its own imports must keep these in the list
custom_imports = dict(
    imports=['backbones.nepa.mmseg_backbone', 'nepa_eval.layer_decay', 'nepa_eval.engine', 'nepa_eval.data.seg',
             'nepa_eval.data.check', 'nepa_eval.preemption'],
    allow_failed_imports=False)

# NEPA is pretrained (and fine-tuned by the release) on pixels normalised with mean = std = 0.5, not with
# ImageNet's statistics (mmseg's MAE file): on the 0-255 scale mmseg uses, that is 127.5 / 127.5. Feeding a
# pretrained backbone other statistics shifts and rescales every patch embedding it learned.
data_preprocessor = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5])
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='NepaBackbone',
        arch='base',  # what the config expects; a checkpoint of another size is an error
        out_indices=[3, 5, 7, 11],
        causal=False,  # bidirectional attention for dense prediction; True keeps the pretraining mask
        drop_path_rate=0.1,
        out_stride=None,  # None: the patch grid (14 px) rounded to even; 16 gives mmseg MAE's grid
        # the weights: any format the door reads; None = random initialisation
        # (--cfg-options model.backbone.init_cfg.checkpoint=nepa_b.pth, or `nepa-eval seg --ckpt`)
        init_cfg=dict(type='Pretrained', checkpoint=None)),
    neck=dict(embed_dim=768, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[768, 768, 768, 768], channels=768, num_classes=150),
    auxiliary_head=dict(in_channels=768, num_classes=150))
