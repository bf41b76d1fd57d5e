# k-NN on frozen features of Fashion-MNIST 28 px (the CPU proxy).
_base_ = ['./nepa-t_fmnist.py']
protocol = 'knn'
train_dataloader = dict(dataset=dict(transform=dict(_delete_=True, kind='resize', img_size=28, mean=(0.5, 0.5, 0.5),
                                                    std=(0.5, 0.5, 0.5), interpolation='bicubic')))
