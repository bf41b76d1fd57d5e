# A Hugging Face dataset written with `save_to_disk` (an `image` column; labels optional for pretraining).
data_root = 'data/imagenet_hf'
img_size = 224
train_dataloader = dict(
    batch_size=128,
    num_workers=10,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='nepa_collate'),
    dataset=dict(type='ImageDataset', source='hf', root=data_root, split='train', image_key='image',
                 label_key=None, transform=dict(kind='pretrain', img_size=img_size, interpolation='bilinear')),
)
knn_train = dict(source='hf', root=data_root, split='train', limit=50000)
knn_test = dict(source='hf', root=data_root, split='validation', limit=10000)
