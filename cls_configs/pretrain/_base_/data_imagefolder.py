# An ImageFolder tree ROOT/train/<class>/*.jpg (ImageNet layout), the release's augmentation:
# RandomResizedCrop 224 (bilinear) + horizontal flip, mean/std 0.5.
data_root = 'data/imagenet'
img_size = 224
train_dataloader = dict(
    batch_size=128,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='nepa_collate'),
    dataset=dict(type='ImageDataset', source='folder', root=data_root, split='train',
                 transform=dict(kind='pretrain', img_size=img_size, interpolation='bilinear')),
)
knn_train = dict(source='folder', root=data_root, split='train', limit=50000)
knn_test = dict(source='folder', root=data_root, split='val', limit=10000)
