# NEPA-L + UPerNet on ADE20K 512x512, 160k iterations: the NEPA-B recipe with the Large backbone
# (1024 wide, 24 blocks, outputs of blocks 7, 11, 15, 23).
_base_ = ['./nepa-b_upernet_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(arch='large', out_indices=[7, 11, 15, 23], drop_path_rate=0.2),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024))
