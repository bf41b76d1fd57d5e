# mmseg's 160k schedule with the MAE anchor's optimiser (AdamW 1e-4, wd 0.05) and layer-wise lr decay.
# Warm-up (1500 iters from 1e-6 of the lr) + poly (power 1) to 0 and the decay rate are set in closed form
# every iteration by LayerDecayLRHook, so mmengine's param schedulers are off (param_scheduler = []).
_base_ = ['mmseg::_base_/schedules/schedule_160k.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimWrapperConstructor',
    # the decay rate, stated once: constant 0.65 (the anchor), or a ramp, e.g. layer_decay_rate=0.35,
    # layer_decay_rate_end=1.0, layer_decay_ramp='linear'; LayerDecayLRHook reads it from the parameter groups
    # exponents as mmseg's LearningRateDecayOptimizerConstructor assigns them (block i: L - i, embeddings: L + 1),
    # the MAE anchor's recipe exactly; the release's classification convention is one lower ('release')
    paramwise_cfg=dict(layer_decay_rate=0.65, layer_decay_rate_end=None, layer_decay_ramp='constant',
                       layer_decay_exponents='mmseg', backbone_prefix='backbone.'))  # num_layers: from the backbone
param_scheduler = []
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup=1500, schedule='poly', power=1.0, min_lr_ratio=0.0,
         warmup_start_ratio=1e-6),
]
# the self-describing run directory (config.py, scalars.jsonl, final_metrics.json), as every nepa-eval task writes;
# bad files (unreadable images, annotations whose size differs from their image) are skipped by the datasets
# `nepa-eval seg` wraps in SkipBadFiles, logged and listed in final_metrics.json (bad_files); the run stops past
# max(min_files, max_fraction x the data) of them
default_hooks = dict(run_record=dict(type='RunRecordHook', task='seg'),
                     bad_files=dict(type='BadFilesHook', max_fraction=0.001, min_files=100),
                     # SIGTERM / SIGUSR1: finish the step, write a checkpoint, status 'preempted', exit 75
                     preemption=dict(type='PreemptionHook'))
