# Ablation: constant layer decay 0.65 (the paper: 83.0 vs 83.8 with the ramp).
_base_ = ['./nepa-b_in1k.py']
layer_decay = dict(rate=0.65, rate_end=None, ramp='constant')
