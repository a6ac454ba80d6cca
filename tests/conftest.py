"""Shared fixtures: synthetic audio and tiny random-weight models, built once per session."""

from __future__ import annotations
