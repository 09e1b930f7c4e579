"""Storage: the Chroma store of chunks, and the SQLite files beside it (the index manifest)."""
