"""Training data: the record schema (records.py) and the Grain input pipeline."""
