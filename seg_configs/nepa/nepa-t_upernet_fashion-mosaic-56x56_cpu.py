# A CPU-sized NEPA + UPerNet on the Fashion-MNIST mosaic set (minutes on 2 cores): the NEPA-B recipe's model,
# schedule and layer decay, scaled down. The backbone is the tiny NEPA of cls_configs/pretrain/nepa_tiny_fmnist.py
# (D 128, 4 blocks, patch 7), so its pretraining checkpoint loads here:
#   nepa-eval make-data mosaic --out data/fashion_mosaic
#   nepa-eval seg --config seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py \
#       --ckpt work_dirs/pretrain/nepa_tiny_fmnist/<checkpoint> --data-root data/fashion_mosaic
# Without --ckpt the backbone starts from random initialisation (the baseline).
_base_ = [
    '../_base_/models/upernet_nepa.py', '../_base_/datasets/fashion_mosaic.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedules/nepa_layer_decay_160k.py'
]
run_scale = 'tiny'  # the report's tiny rows (never NEPA-B / NEPA-L)
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (56, 56)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch=dict(_delete_=True, embed_dim=128, depth=4, num_heads=4, mlp_hidden=256, patch_size=7, rope_rescale=None),
        out_indices=[0, 1, 2, 3],
        drop_path_rate=0.0),  # 56 px / patch 7 = 8 x 8 tokens -> levels 32, 16, 8, 4 (strides 1.75 to 14 px)
    neck=dict(embed_dim=128, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[128, 128, 128, 128], channels=32, num_classes=11, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=16, num_classes=11, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))
train_dataloader = dict(batch_size=8)

train_cfg = dict(type='IterBasedTrainLoop', max_iters=200, val_interval=200)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
custom_hooks = [
    dict(type='LayerDecayLRHook', warmup=20, schedule='poly', power=1.0, min_lr_ratio=0.0,
         warmup_start_ratio=1e-6),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
