"""The operator console: live pages over the ledger (views, partial templates, htmx)."""
