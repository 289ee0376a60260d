"""Benchmarks of mmer-rt against the PyTorch reference and optimum-onnx: run with ``pytest benchmarks/``."""
