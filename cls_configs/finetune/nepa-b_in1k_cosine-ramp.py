# The release's code: decay rate 0.35 -> 1.00 along a cosine ramp.
_base_ = ['./nepa-b_in1k.py']
layer_decay = dict(rate=0.35, rate_end=1.0, ramp='cosine')
