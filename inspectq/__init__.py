"""inspectq's shared core: settings, S3 storage, job records and the Celery app definition.

The API (``api/``) and the workers (``workers/``) both build on it; it never imports torch.
"""
