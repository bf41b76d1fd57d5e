# Decay-schedule comparison on the CPU proxy: the release's cosine ramp 0.35 -> 1.00.
_base_ = ['./nepa-t_fmnist.py']
layer_decay = dict(rate=0.35, rate_end=1.0, ramp='cosine')
