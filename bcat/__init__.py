"""bcat: Batch-level Cross-lingual Alignment Tuning."""

__version__ = "0.1.0"
