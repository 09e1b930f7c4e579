"""Index operations: every index run (recorded), the re-index queue and schedule, the index
lease between replicas, and the knowledge desk through which admins change the knowledge base."""
