"""Ingestion: reading files, cutting them into chunks, embedding them, and the incremental indexer."""
