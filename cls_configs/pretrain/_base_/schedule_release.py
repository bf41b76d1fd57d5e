# The release's optimisation recipe: AdamW (0.9, 0.95), lr 3e-4 per 256 images, scaled by the effective batch
# (per-process batch x processes x accumulative_counts), weight decay 0.05 on matrices only (none on biases, norms,
# LayerScale, cls/mask tokens), cosine with 2.5 % warm-up, grad clip 1.0.
# The optimizer's lr is the rate for 256 images per update; LrRecipeHook (default_hooks.lr_recipe, in
# pretrain_runtime_hooks.py) scales it by the run's effective batch and builds mmengine's LinearLR warm-up +
# CosineAnnealingLR as fractions of train_cfg.max_iters when the Runner starts, so `nepa-eval pretrain`, mmengine's and
# mmseg's tools/train.py and any --cfg-options (train_cfg.max_iters, train_dataloader.batch_size,
# optim_wrapper.accumulative_counts) train at the same lr at every step.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.95), weight_decay=0.05),
    # mmengine's DefaultOptimWrapperConstructor: no decay on 1-D parameters (biases, norms, LayerScale) nor tokens
    paramwise_cfg=dict(flat_decay_mult=0.0, custom_keys={'cls_token': dict(decay_mult=0.0),
                                                         'mask_token': dict(decay_mult=0.0),
                                                         'pos_embed': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=1.0),
    accumulative_counts=1,
)
param_scheduler = []  # built by LrRecipeHook (default_hooks.lr_recipe) from fractions of the budget
