# Optional hooks assembled by `nepa-eval pretrain` (so each is one --cfg-options key away):
# EMA of the weights saved beside every checkpoint (mmengine EMAHook: checkpoint 'state_dict' holds the EMA
# weights, 'ema_state_dict' the raw ones; the weight door returns the raw ones, ema=True the EMA ones) and
# the k-NN monitor (interval 0 = only at the end).
ema = dict(enable=True, momentum=1e-4)  # decay 0.9999
knn = dict(enable=True, interval=0, k=20, temperature=0.07, batch_size=256, blocks=[])  # blocks: also score these blocks' outputs
