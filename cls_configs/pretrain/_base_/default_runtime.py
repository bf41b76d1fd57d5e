# Runtime shared by every pretraining recipe: iteration-based loop, crash-safe checkpoints, health and
# non-finite checks, JSON + TensorBoard scalars, progress with ETA in the log.
custom_imports = dict(imports=['nepa_eval.engine', 'nepa_eval.data.sources', 'nepa_eval.data.check', 'nepa_eval.tasks.pretrain',
                               'nepa_eval.preemption'],
                      allow_failed_imports=False)

train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000)
val_cfg = None
val_dataloader = None
val_evaluator = None

log_interval = 10
default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=log_interval, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='NepaCheckpointHook', interval=500, by_epoch=False, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    run_record=dict(type='RunRecordHook', task='pretrain'),  # config.py, scalars.jsonl, final_metrics.json
    # unreadable images are skipped, logged and listed in final_metrics.json (bad_files); the run stops past
    # max(min_files, max_fraction x the data) of them
    bad_files=dict(type='BadFilesHook', max_fraction=0.001, min_files=100),
    # SIGTERM / SIGUSR1: finish the step, write a checkpoint, status 'preempted', exit 75 (nepa_eval/preemption.py)
    preemption=dict(type='PreemptionHook'),
)

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=False, window_size=log_interval)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
