# Decay-schedule comparison on the CPU proxy: constant 0.65.
_base_ = ['./nepa-t_fmnist.py']
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65, layer_decay_rate_end=None, layer_decay_ramp='constant'))
