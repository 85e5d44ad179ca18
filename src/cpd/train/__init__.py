"""Training and evaluation loops: pretraining, finetuning, checkpoints, distributed helpers."""
