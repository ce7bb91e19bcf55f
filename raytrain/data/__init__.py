"""Datasets -> what the workers read: `prepare` (the cache and `DataInfo`), `ingest` (Ray Data or in-memory
splits), `memory` and `batches` (what a rank iterates), and the readers (`mnist`, `parquet`, `images`, `folders`).
"""
