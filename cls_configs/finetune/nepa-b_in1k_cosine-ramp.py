# The release's code: decay rate 0.35 -> 1.00 along a cosine ramp.
_base_ = ['./nepa-b_in1k.py']
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.35, layer_decay_rate_end=1.0, layer_decay_ramp='cosine'))
