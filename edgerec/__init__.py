"""edgerec: edge-cloud recommendation for local-services (O2O) feeds.

Layout (see README "Tour"):
    edgerec.data      dataset registry, loaders, O2O simulator, event schema, sample builders
    edgerec.features  time features and feature specs shared by training and serving
    edgerec.models    layers/ plus one file per model
    edgerec.train     metrics, config, trainer, results ledger
"""

__version__ = "0.1.0"
