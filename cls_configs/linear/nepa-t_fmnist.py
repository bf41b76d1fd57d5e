# Linear probe on the CPU proxy (Fashion-MNIST 28 px).
_base_ = ['./_base_/linear_recipe.py', '../finetune/_base_/datasets/fashion_mnist.py', './_base_/default_runtime.py']
run_scale = 'tiny'  # the report's tiny rows (never NEPA-B / NEPA-L)
model = dict(num_classes=10,  # Fashion-MNIST's
             backbone=dict(_delete_=True, embed_dim=128, depth=4, num_heads=4, mlp_hidden=256, patch_size=7,
                           img_size=28))
optim_wrapper = dict(optimizer=dict(lr=0.1))
train_cfg = dict(by_epoch=True, max_epochs=6, val_interval=2)
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup_epochs=1, schedule='cosine', min_lr_ratio=0.0),
    dict(type='ClsRecordHook', protocol='linear'),
]
train_dataloader = dict(dataset=dict(transform=dict(_delete_=True, kind='pretrain', img_size=28, mean=(0.5, 0.5, 0.5),
                                                    std=(0.5, 0.5, 0.5), interpolation='bicubic', scale=(0.5, 1.0))))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=2))
