# NEPA-B linear probe on ImageNet-1k (batch 8 x 128 = 1024, 90 epochs, RandomResizedCrop + flip).
_base_ = ['./_base_/linear_recipe.py', '../finetune/_base_/datasets/imagenet.py', './_base_/default_runtime.py']
train_dataloader = dict(dataset=dict(transform=dict(_delete_=True, kind='pretrain', img_size=224, mean=(0.5, 0.5, 0.5),
                                                    std=(0.5, 0.5, 0.5), interpolation='bicubic')))
