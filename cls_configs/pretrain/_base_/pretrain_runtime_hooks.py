# The hooks every pretraining run has, declared here so mmengine's and mmseg's own tools/train.py run them too.
# Each has its own key in default_hooks (mmengine registers every entry, ordered by priority; one _base_ file
# states the dict), so a switch reaches its hook by name, whatever else the config declares or in which order:
# --cfg-options default_hooks.knn.enabled=False / default_hooks.health.interval=2 / default_hooks.ema.momentum=0.01.
#   lr_recipe   LrRecipeHook: lr = the optimizer's lr (stated per base_batch_size images) x effective batch /
#               base_batch_size, the batch being per-process batch x processes x accumulative_counts; then
#               mmengine's LinearLR warm-up over warmup_ratio x max_iters (from warmup_start_factor x lr) and
#               CosineAnnealingLR to min_lr_ratio x lr; resolved when the Runner starts, after --cfg-options
#   checkpoint  NepaCheckpointHook: mmengine checkpoints written atomically, with the RNG states (exact resume)
#   ema         EMAHook: EMA of the weights, saved in every checkpoint (its 'state_dict' holds the EMA weights,
#               'ema_state_dict' the raw ones; the weight door returns the raw ones, ema=True the EMA ones);
#               decay 0.9999
#   health      NepaHealthHook: out_std and eff_rank every `interval` steps, and the collapse detector: out_std below
#               collapse_std (absolute) or below collapse_ratio x the highest out_std of the run, for `patience`
#               checks -> status 'collapsed' in final_metrics.json and, with stop_on_collapse, the run stops; and the
#               trivial-solution detector: mean cosine to the target over the first trivial_checks (3) checks >=
#               trivial_cos (0.9) (the no-shift copy; measured values in NepaHealthHook's docstring) -> status
#               'trivial' (a failed row), stopped with stop_on_trivial
#   knn         KnnMonitorHook: k-NN (k 20, T 0.07) of the frozen backbone on the config's knn_train / knn_test;
#               interval 0 = only at the end; layers: None = final features, k = block k's output; ema: also the EMA
#               weights; enabled=False switches it off
default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='NepaCheckpointHook', interval=500, by_epoch=False, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    run_record=dict(type='RunRecordHook', task='pretrain'),  # config.py, scalars.jsonl, final_metrics.json
    # unreadable images are skipped, logged and listed in final_metrics.json (bad_files); the run stops past
    # max(min_files, max_fraction x the data) of them
    bad_files=dict(type='BadFilesHook', max_fraction=0.001, min_files=100),
    # SIGTERM / SIGUSR1: finish the step, write a checkpoint, status 'preempted', exit 75 (nepa_eval/preemption.py)
    preemption=dict(type='PreemptionHook'),
    lr_recipe=dict(type='LrRecipeHook', base_batch_size=256, warmup_ratio=0.025, warmup_start_factor=1e-3,
                   min_lr_ratio=0.0),
    ema=dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=1e-4, update_buffers=True, priority=49),
    health=dict(type='NepaHealthHook', interval=10, collapse_std=0.05, collapse_ratio=0.6, patience=3, min_steps=0,
                stop_on_collapse=True, trivial_cos=0.9, trivial_checks=3, stop_on_trivial=True),
    knn=dict(type='KnnMonitorHook', interval=0, k=20, temperature=0.07, batch_size=256, layers=[None], ema=True,
             enabled=True),
)
