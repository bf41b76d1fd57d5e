# The release's NEPA-B pretraining: ImageNet-1k (ImageFolder), batch 4096 (here 8 GPUs x 128 x 4 accumulation
# steps; lr follows the effective batch), 1600 epochs, AdamW (0.9, 0.95), lr 3e-4 x 4096/256 = 4.8e-3, wd 0.05,
# cosine with 2.5 % warm-up, grad clip 1.0, bf16, EMA 0.9999.
_base_ = ['./_base_/default_runtime.py', './_base_/schedule_release.py', './_base_/data_imagefolder.py',
          './_base_/model_nepa_base.py', './_base_/pretrain_runtime_hooks.py']

train_dataloader = dict(batch_size=128)
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', accumulative_counts=4)
# Budget: 1600 epochs of 1,281,167 images at 4096 per update = 500,455 updates = 2,001,820 micro-iterations
# (x 4 accumulation steps; train_cfg counts micro-iterations). final_metrics.json records both.
train_cfg = dict(max_iters=1600 * 1281167 // 4096 * 4)
default_hooks = dict(checkpoint=dict(interval=5000, max_keep_ckpts=3), logger=dict(interval=50),
                     health=dict(interval=50), knn=dict(interval=20000))
env_cfg = dict(dist_cfg=dict(backend='nccl'))
