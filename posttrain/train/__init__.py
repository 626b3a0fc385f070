"""The one training loop (on accelerate) and what it needs: checkpoints, metrics, logging."""
