"""The store: SQLite connection, schema migrations and the repositories (the only SQL)."""
