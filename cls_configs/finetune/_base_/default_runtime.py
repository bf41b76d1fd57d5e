# Runtime shared by the fine-tuning configs: mmengine Runner, hooks, model + EMA validation.
custom_imports = dict(imports=['nepa_eval.engine', 'nepa_eval.data.sources', 'nepa_eval.data.check', 'nepa_eval.tasks.cls',
                               'nepa_eval.preemption'],
                      allow_failed_imports=False)
default_scope = None
protocol = 'finetune'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),  # no schedulers: LayerDecayLRHook sets every lr
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='ema_top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    run_record=dict(type='RunRecordHook', task='cls'),  # config.py, scalars.jsonl, final_metrics.json
    # unreadable images are skipped, logged and listed in final_metrics.json (bad_files); the run stops past
    # max(min_files, max_fraction x the data) of them
    bad_files=dict(type='BadFilesHook', max_fraction=0.001, min_files=100),
    # SIGTERM / SIGUSR1: finish the step, write a checkpoint, status 'preempted', exit 75 (nepa_eval/preemption.py)
    preemption=dict(type='PreemptionHook'),
)
param_scheduler = []

val_cfg = dict(type='ClsValLoop')  # evaluates the model and its EMA: top1/top5, ema_top1/ema_top5
test_cfg = dict(type='TestLoop')
val_evaluator = dict(type='TopKAccuracy')
test_evaluator = val_evaluator

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=True, window_size=50)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
