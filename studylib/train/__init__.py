"""Training: the setup shared by train, tune and bench, the loop, one whole run, metrics, profiling."""
