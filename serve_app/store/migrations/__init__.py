"""The task database's Alembic revisions (env.py, versions/); run by serve_app.store.migrate."""
