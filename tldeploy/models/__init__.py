"""Backbones (registry and specs), the channel-attention head, checkpoints."""
