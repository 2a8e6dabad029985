"""Weights in and out: PyTorch-layout conversion (convert) and init_from merging (finetune)."""
