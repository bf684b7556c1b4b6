"""Experiments: the results grid (``kd-system experiment``) and the from-scratch RLlib baseline."""
