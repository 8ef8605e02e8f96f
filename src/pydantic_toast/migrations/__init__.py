"""Alembic migrations of the ``external_records`` table (``script_location = pydantic_toast:migrations``)."""
