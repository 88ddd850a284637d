"""Prefect flows that wire the tasks: ingest, bulk_ingest, maintenance."""
