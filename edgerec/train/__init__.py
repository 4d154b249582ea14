"""Training: metrics, experiment configs, the trainer and the results ledger."""
