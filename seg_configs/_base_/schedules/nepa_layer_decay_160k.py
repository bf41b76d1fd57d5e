# mmseg's 160k schedule with the MAE anchor's optimiser (AdamW 1e-4, wd 0.05) and layer-wise lr decay.
# Warm-up (1500 iters from 1e-6 of the lr) + poly (power 1) to 0 and the decay rate are set in closed form
# every iteration by LayerDecayLRHook, so mmengine's param schedulers are off (param_scheduler = []).
_base_ = ['mmseg::_base_/schedules/schedule_160k.py']

# the decay rate: constant 0.65 (the anchor), or a ramp, e.g. dict(rate=0.35, rate_end=1.0, ramp='linear').
# `nepa-eval seg` mirrors this dict into the hook below and into paramwise_cfg; with mmseg's own
# tools/train.py set both (or override custom_hooks) when changing it.
layer_decay = dict(rate=0.65, rate_end=None, ramp='constant')

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.65, backbone_prefix='backbone.'))  # num_layers: from the backbone
param_scheduler = []
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup=1500, schedule='poly', power=1.0, min_lr_ratio=0.0,
         warmup_start_ratio=1e-6, rate=0.65, rate_end=None, ramp='constant'),
]
