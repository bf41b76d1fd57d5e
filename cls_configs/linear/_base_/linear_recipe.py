# Linear probe: frozen backbone (eval mode), a plain Linear on the mean-pooled final-normed patch tokens
# (no BatchNorm, no fc_norm); SGD, no weight decay, warmup + cosine. No EMA.
model = dict(
    type='NepaClassifier',
    num_classes=1000,  # ImageNet-1k's; `nepa-eval cls --data DIR` takes the class count of DIR
    ckpt=None,
    backbone=dict(model_name='nepa_base_patch14_224', img_size=224),  # attention mode: the checkpoint's
    linear_probe=True,
)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.4, momentum=0.9, weight_decay=0.0),  # 0.1 x 1024 / 256
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),  # only the head trains: no decay to apply
)
train_cfg = dict(by_epoch=True, max_epochs=90, val_interval=5)
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup_epochs=10, schedule='cosine', min_lr_ratio=0.0),
    dict(type='ClsRecordHook', protocol='linear'),
]
