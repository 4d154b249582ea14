"""Datasets: registry, loaders for real packaged data, the O2O simulator, event schema, samples."""
