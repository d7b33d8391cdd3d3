"""Attention operators: a plain PyTorch reference beside a fused Triton kernel for each."""
