# The release's optimisation recipe: AdamW (0.9, 0.95), lr = base_lr x effective batch / 256 (the batch is
# per-process batch x processes x accumulative_counts, resolved by `nepa-eval pretrain`), weight decay 0.05
# on matrices only (none on biases, norms, LayerScale, cls/mask tokens), cosine with 2.5 % warm-up, grad
# clip 1.0. `lr_schedule` is turned into mmengine's LinearLR + CosineAnnealingLR after --cfg-options.
base_lr = 3e-4
base_batch_size = 256
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.95), weight_decay=0.05),
    # mmengine's DefaultOptimWrapperConstructor: no decay on 1-D parameters (biases, norms, LayerScale) nor tokens
    paramwise_cfg=dict(flat_decay_mult=0.0, custom_keys={'cls_token': dict(decay_mult=0.0),
                                                         'mask_token': dict(decay_mult=0.0),
                                                         'pos_embed': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=1.0),
    accumulative_counts=1,
)
lr_schedule = dict(warmup_ratio=0.025, min_lr_ratio=0.0)
param_scheduler = []
