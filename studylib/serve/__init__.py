"""Serving a trained run: its exports (export), the model behind the server (predictor), the HTTP app (app), `studylib serve` (server), the load-test client (loadtest)."""
