# The tiny CPU config with a linear head instead of UPerNet: one 1x1 convolution on the last block's
# (final-normed) patch features, bilinearly upsampled to the image, no neck and no auxiliary head
# (the "linear" protocol of DINOv2's segmentation evaluation, here with the backbone fine-tuned).
# With UPerNet's convolutions, pyramid pooling and FPN, a tiny random-init backbone is mostly a patchifier
# for a capable CNN head; with a linear head the per-pixel classes must come from the backbone's features,
# so this is the config that shows what pretraining gives the backbone (scripts/seg_transfer.py).
_base_ = ['./nepa-t_upernet_fashion-mosaic-56x56_cpu.py']
model = dict(
    backbone=dict(out_indices=[3], out_norm=True),
    neck=None,
    decode_head=dict(
        _delete_=True, type='FCNHead', in_channels=128, in_index=0, channels=128, num_convs=0, concat_input=False,
        dropout_ratio=0.0, num_classes=11, norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None)

# the budget of the pretrained-vs-random comparison: 1000 iterations at lr 2e-3 with the paper's
# fine-tuning layer decay, rising linearly from 0.35 to 1.0 (both arms get exactly this)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000, val_interval=1000)
optim_wrapper = dict(optimizer=dict(lr=2e-3),
                     paramwise_cfg=dict(layer_decay_rate=0.35, layer_decay_rate_end=1.0, layer_decay_ramp='linear'))
