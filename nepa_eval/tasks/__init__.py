"""One small module per task (pretrain, cls, seg): its mmengine model, hooks and helpers."""
