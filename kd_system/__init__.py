"""kd_system: distributed policy distillation for deep RL (Ray actors, Redis replay, torch learner)."""

__version__ = "0.1.0"
