# The release's ImageNet fine-tuning recipe for NEPA-B, with the paper's layer-decay ramp 0.35 -> 1.00.
model = dict(
    type='NepaClassifier',
    num_classes=1000,  # ImageNet-1k's; `nepa-eval cls --data DIR` takes the class count of DIR
    ckpt=None,         # set by `nepa-eval cls --ckpt PATH`
    backbone=dict(model_name='nepa_base_patch14_224', img_size=224, causal=False, drop_path_rate=0.1, rope_rescale=2.0),
    freeze_patch_embed=True,
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0),
    label_smoothing=0.1,
)

# layer-wise lr decay: group lr = lr * schedule(t) * rate(t) ** exponent (head, fc_norm, final norm: head_lr);
# the rate and its ramp are stated here only (LayerDecayLRHook reads them from the parameter groups)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.35, layer_decay_rate_end=1.0,  # the paper: 0.35 -> 1.00,
                       layer_decay_ramp='linear', head_lr=1e-3),        # linear ('cosine': the release's code)
    clip_grad=dict(max_norm=1.0),
)
train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup_epochs=20, schedule='cosine', min_lr_ratio=0.0),
    dict(type='EMAHook', momentum=1e-4),  # mmengine's momentum = 1 - decay: EMA 0.9999
    dict(type='ClsRecordHook', protocol='finetune'),
]
