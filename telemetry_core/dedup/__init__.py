"""The dedup stage: the rules, backends (SQLite, Redis) and the ledger."""
