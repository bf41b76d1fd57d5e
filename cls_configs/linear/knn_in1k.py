# k-NN (k = 20, T = 0.07, cosine) on frozen features of ImageNet-1k: eval transforms on both splits.
_base_ = ['./nepa-b_in1k.py']
protocol = 'knn'
train_dataloader = dict(dataset=dict(transform={{_base_.eval_transform}}))
