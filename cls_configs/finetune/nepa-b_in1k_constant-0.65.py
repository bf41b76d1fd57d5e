# Ablation: constant layer decay 0.65 (the paper: 83.0 vs 83.8 with the ramp).
_base_ = ['./nepa-b_in1k.py']
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65, layer_decay_rate_end=None, layer_decay_ramp='constant'))
