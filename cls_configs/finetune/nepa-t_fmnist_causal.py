# Causal fine-tune (NEPA-B*) on the CPU proxy.
_base_ = ['./nepa-t_fmnist.py']
model = dict(backbone=dict(causal=True))
