"""Alembic migrations of chatgate's schema. ``gateway.migrate`` runs them at start-up."""
