"""Deployment files of a trained policy: ``kd-system export`` turns a student snapshot, a best
checkpoint or a teacher into an ONNX (fp32, or int8 by onnxruntime quantization) or TorchScript
file with a JSON sidecar recording its source, input, output and measured parity, and
``loading.load_exported`` runs such a file again behind the policy runtime (``kd-system eval``)."""
