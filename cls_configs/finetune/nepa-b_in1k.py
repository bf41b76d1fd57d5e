# NEPA-B ImageNet-1k fine-tuning, the release's recipe with the paper's decay ramp 0.35 -> 1.00 (83.8 top-1).
_base_ = ['./_base_/nepa-b_recipe.py', './_base_/datasets/imagenet.py', './_base_/default_runtime.py']
