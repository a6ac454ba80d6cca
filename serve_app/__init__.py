"""The stem-extraction service on Ray Serve: ingress, pipeline, separator, preprocessor,
webhook dispatcher, and the task and blob stores they share."""
