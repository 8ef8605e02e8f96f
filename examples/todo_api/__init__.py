"""The todo API from the seeds: FastAPI on PostgreSQL through pydantic-toast."""
