"""Tests of the batch jobs (serve_app/batch)."""
