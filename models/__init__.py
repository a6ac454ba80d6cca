"""Separation core: audio in and out, demucs models, the segment engine, stem plans.

Nothing in this package imports Ray; `serve_app` composes these parts into a service.
"""
