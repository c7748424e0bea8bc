"""What the API, the operator and the trainer share: settings, the run domain, store, blobs."""

__version__ = "0.1.0"
