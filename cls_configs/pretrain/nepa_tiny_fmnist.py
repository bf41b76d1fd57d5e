# A CPU recipe that learns in a few minutes on 2 cores: a tiny NEPA on Fashion-MNIST 28x28, patch 7
# (16 patches + cls), the release's objective and optimiser, a k-NN monitor on the test set at the end.
# Ablations: --cfg-options model.shift=False / model.causal=False / model.stop_grad=False / model.mask_ratio=0.4
_base_ = ['./_base_/default_runtime.py', './_base_/schedule_release.py', './_base_/data_fashion_mnist.py',
          './_base_/model_nepa_base.py', './_base_/pretrain_runtime_hooks.py']
run_scale = 'tiny'  # the report's tiny rows (never NEPA-B / NEPA-L)

model = dict(backbone=dict(embed_dim=128, depth=4, num_heads=4, mlp_hidden=256, patch_size=7, img_size=28,
                           rope_rescale=None))
train_dataloader = dict(batch_size=128, num_workers=1)
train_cfg = dict(max_iters=600)
# x 128/256 (LrRecipeHook): a tiny model takes a larger rate than ViT-B
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1.5e-3))
default_hooks = dict(checkpoint=dict(interval=200, max_keep_ckpts=2), logger=dict(interval=20),
                     ema=dict(momentum=0.01),  # decay 0.99: a short run needs a short average
                     health=dict(interval=20),
                     knn=dict(layers=[None, 1]))  # final features and block 1's (iGPT-style)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
