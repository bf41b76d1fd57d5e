# NEPA-B*: fine-tuned with causal attention (the paper: 82.5 vs 83.8).
_base_ = ['./nepa-b_in1k.py']
model = dict(backbone=dict(causal=True))
