# NEPA-B + UPerNet on ADE20K, 512x512 crops, 160k iterations, batch 2 x 8 GPUs: mmseg's MAE-B anchor recipe
# (mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py) with the NEPA backbone.
#   nepa-eval seg --ckpt nepa_b.pth --data-root data/ade              (picks this config for a ViT-B checkpoint)
#   python <mmseg>/.mim/tools/train.py THIS --cfg-options model.backbone.init_cfg.type=Pretrained \
#          model.backbone.init_cfg.checkpoint=nepa_b.pth
_base_ = [
    '../_base_/models/upernet_nepa.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedules/nepa_layer_decay_160k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # slide inference as the MAE anchor; whole-image: model.test_cfg=dict(mode='whole') (`--inference whole`)
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
