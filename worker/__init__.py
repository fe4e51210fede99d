"""Celery batch workers: pull jobs in batches, run the face pipeline, write results to Postgres."""
