"""One retrain run: its parameters, its request, and one module per step (see ``state``)."""
