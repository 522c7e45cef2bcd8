"""Alembic migrations of chatgate's schema. ``gateway.store.migrate`` runs them at start-up."""
