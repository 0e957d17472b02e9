"""Serving a trained run: export to ONNX and torch.export, the HTTP app, the load-test client."""
