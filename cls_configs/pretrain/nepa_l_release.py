# The release's NEPA-L pretraining: NEPA-B's recipe with D 1024, 24 layers, 16 heads.
_base_ = ['./nepa_b_release.py']

model = dict(backbone=dict(embed_dim=1024, depth=24, num_heads=16))
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(accumulative_counts=8)
# Budget: 500,455 updates = 4,003,640 micro-iterations (x 8 accumulation steps of 64 x 8 GPUs)
train_cfg = dict(max_iters=1600 * 1281167 // 4096 * 8)
