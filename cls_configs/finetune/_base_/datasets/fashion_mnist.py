# Fashion-MNIST (built in, offline: Debian's dataset-fashion-mnist) at 28 px for CPU runs: fixed subsets of
# 4000 train and 1000 test images (raise dataset.limit, or set it to None, for the full 60k / 10k).
img_size = 28
train_transform = dict(kind='train', img_size=img_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       interpolation='bicubic', scale=(0.35, 1.0), hflip=0.5)
eval_transform = dict(kind='resize', img_size=img_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      interpolation='bicubic')

train_dataloader = dict(
    batch_size=64, num_workers=0, drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='nepa_collate'),
    dataset=dict(type='ImageDataset', source='fashion_mnist', split='train', limit=4000,
                 transform=train_transform))
val_dataloader = dict(
    batch_size=250, num_workers=0, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='nepa_collate'),
    dataset=dict(type='ImageDataset', source='fashion_mnist', split='val', limit=1000, transform=eval_transform))
test_dataloader = val_dataloader
