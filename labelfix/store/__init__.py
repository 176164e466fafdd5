"""The labelfix store: SQLAlchemy models, engine and migrations, queries."""

from labelfix.store.engine import Store, resolve_url

__all__ = ["Store", "resolve_url"]
