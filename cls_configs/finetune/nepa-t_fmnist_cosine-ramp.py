# Decay-schedule comparison on the CPU proxy: the release's cosine ramp 0.35 -> 1.00.
_base_ = ['./nepa-t_fmnist.py']
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.35, layer_decay_rate_end=1.0, layer_decay_ramp='cosine'))
