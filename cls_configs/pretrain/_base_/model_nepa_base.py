# NEPA-B as released: D 768, 12 layers, 12 heads, patch 14, 2D RoPE (theta 100, train-time rescale 2),
# QK-Norm, LayerScale 1e-5, GeLU MLP. The objective's switches default to the paper's (all on, no masking).
model = dict(
    type='NepaPretrainModel',
    shift=True,
    causal=True,
    stop_grad=True,
    mask_ratio=0.0,
    backbone=dict(embed_dim=768, depth=12, num_heads=12, patch_size=14, img_size=224, layerscale_init=1e-5,
                  pos_embed='rope', qk_norm=True, mlp_type='gelu', rope_rescale=2.0, drop_path_rate=0.0),
)
