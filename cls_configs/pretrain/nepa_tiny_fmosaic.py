# The tiny CPU recipe pretrained on the segmentation domain: unlabelled Fashion-MNIST mosaic canvases
# (56x56, 2-3 items, made on the fly from the TRAINING split's items, so the mosaic set's validation
# canvases, made from the test split, are never seen), 8 x 8 patches of 7 px instead of one 28 px item.
# The backbone it leaves fits seg_configs/nepa/nepa-t_*_fashion-mosaic-56x56_cpu.py (scripts/seg_transfer.py).
_base_ = ['./nepa_tiny_fmnist.py']

model = dict(backbone=dict(img_size=56))
train_dataloader = dict(dataset=dict(
    _delete_=True, type='ImageDataset', source='fashion_mosaic', split='train',
    transform=dict(kind='pretrain', img_size=56, scale=(0.5, 1.0), interpolation='bilinear')))
# the k-NN monitor classifies single 28 px items, at their own size (RoPE takes any grid)
knn_train = dict(transform=dict(kind='resize', img_size=28))
knn_test = dict(transform=dict(kind='resize', img_size=28))
