# ImageNet-1k as an ImageFolder tree (ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG); `--data DIR` sets
# the root (a Hugging Face dataset saved with save_to_disk works too). The release's augmentation via timm.
data_root = 'data/imagenet'
img_size = 224
train_transform = dict(kind='train', img_size=img_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       interpolation='bicubic', auto_augment='rand-m9-mstd0.5-inc1',
                       re_prob=0.25, re_mode='pixel', re_count=1)
eval_transform = dict(kind='eval', img_size=img_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      interpolation='bicubic', crop_pct=0.875)

train_dataloader = dict(
    batch_size=128,  # per GPU: 8 GPUs x 128 = 1024, the release's batch
    num_workers=10, persistent_workers=True, pin_memory=True,
    drop_last=True,  # Mixup/CutMix needs even batches
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='nepa_collate'),
    dataset=dict(type='ImageDataset', source='folder', root=data_root, split='train', transform=train_transform))
val_dataloader = dict(
    batch_size=128, num_workers=10, persistent_workers=True, pin_memory=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='nepa_collate'),
    dataset=dict(type='ImageDataset', source='folder', root=data_root, split='val', transform=eval_transform))
test_dataloader = val_dataloader
