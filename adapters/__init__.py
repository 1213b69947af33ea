"""Adapters of the external systems (S3, butler, Rucio, destination disk); no Temporal in them."""
