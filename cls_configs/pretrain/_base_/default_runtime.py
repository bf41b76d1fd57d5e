# Runtime shared by every pretraining recipe: iteration-based loop, JSON + TensorBoard scalars, progress with ETA
# in the log; its hooks (crash-safe checkpoints, lr recipe, health and non-finite checks, ...):
# pretrain_runtime_hooks.py.
custom_imports = dict(imports=['nepa_eval.engine', 'nepa_eval.data.sources', 'nepa_eval.data.check', 'nepa_eval.tasks.pretrain',
                               'nepa_eval.preemption'],
                      allow_failed_imports=False)

train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000)
val_cfg = None
val_dataloader = None
val_evaluator = None

log_interval = 10
# the hooks (default_hooks, keyed by name): pretrain_runtime_hooks.py

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=False, window_size=log_interval)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
