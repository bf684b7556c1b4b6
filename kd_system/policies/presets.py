"""The CNN students and teachers for Atari frame stacks, by name. Plain data, free of torch, so
the config can check ``student.preset`` without loading torch (the CLI's first error stays fast)."""
from __future__ import annotations

from typing import Any

# Parameter counts below are for 4x84x84 inputs and 6 actions (Pong's minimal set).
CNN_PRESETS: dict[str, dict[str, Any]] = {
    # Mnih et al. 2015 (Nature) DQN: 1,687,206 parameters.
    "nature": {"channels": [32, 64, 64], "kernels": [8, 4, 3], "strides": [4, 2, 1], "fc": [512]},
    # Rusu et al. 2015, "Policy Distillation", Table 1 students (same kernels and strides):
    # 424,790 parameters = 25.2% of nature (the paper: ~25%)
    "rusu-25": {"channels": [16, 32, 32], "kernels": [8, 4, 3], "strides": [4, 2, 1], "fc": [256]},
    # 111,798 parameters = 6.6% of nature (the paper: ~7%)
    "rusu-7": {"channels": [16, 16, 16], "kernels": [8, 4, 3], "strides": [4, 2, 1], "fc": [128]},
    # 61,174 parameters = 3.6% of nature (the paper: ~4%)
    "rusu-4": {"channels": [16, 16, 16], "kernels": [8, 4, 3], "strides": [4, 2, 1], "fc": [64]},
    # 29,534 parameters = 1.75% of nature: Sun & Fazli 2019's compression ("full distillation at
    # 1.7%"), here as rusu-4 with a narrower fc layer (their own architecture differs)
    "tiny-1.7": {"channels": [16, 16, 16], "kernels": [8, 4, 3], "strides": [4, 2, 1], "fc": [24]},
}
