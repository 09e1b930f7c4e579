"""Search: hybrid retrieval (vectors + BM25), the keyword tokenizer, the fast query encoder."""
