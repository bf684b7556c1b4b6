"""Networks, the checkpoint format (spec.json + model.safetensors), frozen policies for
inference, and the choice of a student network for an env's observations."""
