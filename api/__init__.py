"""The HTTP API: accepts jobs, stores images, enqueues, answers 202; reads results from Postgres."""
