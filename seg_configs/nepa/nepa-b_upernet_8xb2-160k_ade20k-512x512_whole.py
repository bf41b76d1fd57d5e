# NEPA-B + UPerNet, ADE20K: whole-image inference (RoPE runs any size) instead of 512/341 sliding windows.
_base_ = ['./nepa-b_upernet_8xb2-160k_ade20k-512x512.py']
model = dict(test_cfg=dict(_delete_=True, mode='whole'))
