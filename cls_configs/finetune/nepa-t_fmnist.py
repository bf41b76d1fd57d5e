# CPU proxy of the recipe: a tiny NEPA on Fashion-MNIST 28 px (6k train / 2k val images), a few minutes on 2 cores.
# The architecture below is used only without a checkpoint (random init); with --ckpt it comes from the file.
_base_ = ['./_base_/nepa-b_recipe.py', './_base_/datasets/fashion_mnist.py', './_base_/default_runtime.py']
model = dict(
    backbone=dict(_delete_=True, embed_dim=128, depth=6, num_heads=4, mlp_hidden=512, patch_size=7, img_size=28,
                  causal=False, drop_path_rate=0.1, rope_rescale=2.0),
    mixup=None,  # a few hundred steps are too short for Mixup/CutMix; the ImageNet configs keep them
)
layer_decay = dict(rate=0.35, rate_end=1.0, ramp='linear')
optim_wrapper = dict(optimizer=dict(lr=2e-3), paramwise_cfg=dict(head_lr=1e-3))
train_cfg = dict(by_epoch=True, max_epochs=8, val_interval=2)
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup_epochs=1, schedule='cosine', min_lr_ratio=0.0, **layer_decay),
    dict(type='EMAHook', momentum=0.01),  # EMA decay 0.99 for a run of a few hundred steps
    dict(type='ClsRecordHook', protocol='finetune'),
]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=2, max_keep_ckpts=1))
log_processor = dict(window_size=20)
