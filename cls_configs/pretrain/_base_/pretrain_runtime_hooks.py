# The hooks every pretraining run has, declared here so mmengine's and mmseg's own tools/train.py run them too.
# Their order is fixed (change one with --cfg-options custom_hooks.<index>.<key>=<value>; a recipe that changes
# them restates the list):
#   0  EMAHook: EMA of the weights, saved in every checkpoint (its 'state_dict' holds the EMA weights,
#      'ema_state_dict' the raw ones; the weight door returns the raw ones, ema=True the EMA ones); decay 0.9999
#   1  NepaHealthHook: out_std and eff_rank every `interval` steps, and the collapse detector: out_std below
#      collapse_std (absolute) or below collapse_ratio x the highest out_std of the run, for `patience` checks
#      -> status 'collapsed' in final_metrics.json and, with stop_on_collapse, the run stops; and the trivial-solution
#      detector: mean cosine to the target over the first trivial_checks (3) checks >= trivial_cos (0.9) (the
#      no-shift copy; measured values in NepaHealthHook's docstring) -> status 'trivial' (a failed row), stopped
#      with stop_on_trivial
#   2  KnnMonitorHook: k-NN (k 20, T 0.07) of the frozen backbone on the config's knn_train / knn_test;
#      interval 0 = only at the end; layers: None = final features, k = block k's output; ema: also the EMA
#      weights; enabled=False switches it off
custom_hooks = [
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=1e-4, update_buffers=True, priority=49),
    dict(type='NepaHealthHook', interval=10, collapse_std=0.05, collapse_ratio=0.6, patience=3, min_steps=0,
         stop_on_collapse=True, trivial_cos=0.9, trivial_checks=3, stop_on_trivial=True),
    dict(type='KnnMonitorHook', interval=0, k=20, temperature=0.07, batch_size=256, layers=[None], ema=True,
         enabled=True),
]
