"""Alembic migrations of ``external_records`` (script_location pydantic_toast:migrations)."""
