"""Workstation-side code (PyTorch): reference model, ONNX export, parity gate, bundle writer."""
