# Fashion-MNIST from Debian's dataset-fashion-mnist (offline): RandomResizedCrop + flip, mean/std 0.5.
img_size = 28
train_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='nepa_collate'),
    dataset=dict(type='ImageDataset', source='fashion_mnist', split='train',
                 transform=dict(kind='pretrain', img_size=img_size, scale=(0.35, 1.0), interpolation='bilinear')),
)
# k-NN monitor data (labelled): train features vote, test features are classified.
knn_train = dict(source='fashion_mnist', split='train', limit=10000)
knn_test = dict(source='fashion_mnist', split='test')
