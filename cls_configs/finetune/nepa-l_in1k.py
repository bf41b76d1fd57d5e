# NEPA-L ImageNet-1k fine-tuning (85.3 top-1): lr 4e-3, warmup 30 epochs, drop path 0.2, eval crop 0.95.
_base_ = ['./nepa-b_in1k.py']
model = dict(backbone=dict(model_name='nepa_large_patch14_224', drop_path_rate=0.2))
optim_wrapper = dict(optimizer=dict(lr=4e-3))
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup_epochs=30, schedule='cosine', min_lr_ratio=0.0),
    dict(type='EMAHook', momentum=1e-4),
    dict(type='ClsRecordHook', protocol='finetune'),
]
val_dataloader = dict(dataset=dict(transform=dict(crop_pct=0.95)))
test_dataloader = val_dataloader
