# Decay-schedule comparison on the CPU proxy: constant 0.65.
_base_ = ['./nepa-t_fmnist.py']
layer_decay = dict(rate=0.65, rate_end=None, ramp='constant')
