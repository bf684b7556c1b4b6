"""Teachers from other libraries: Stable-Baselines3 and sb3-contrib zips, CleanRL state dicts, RLlib
checkpoints, TorchScript and ONNX files, converted to the project's policy format with a model
card that records the source, its sha256 and the measured parity with the source library's own
forward (``kd-system teacher import``; ``teacher.checkpoint=FILE`` imports on the fly)."""
