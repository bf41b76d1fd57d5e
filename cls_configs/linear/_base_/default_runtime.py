# Runtime of the frozen-feature protocols (linear probe, k-NN): the fine-tuning runtime, keeping the best
# checkpoint by the model's own top-1 (no EMA).
_base_ = ['../../finetune/_base_/default_runtime.py']
protocol = 'linear'
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1, save_best='top1'))
knn = dict(k=20, temperature=0.07)  # used by --protocol knn
