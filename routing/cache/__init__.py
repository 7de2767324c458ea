"""Response cache: exact and semantic, tenant-isolated, with a near-miss guard (see docs/caching.md)."""
