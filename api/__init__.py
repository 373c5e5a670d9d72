"""inspectq's ingest API: a thin Flask app that accepts images, stores them in S3, enqueues a
Celery job by name and answers 202 with a job id. Build it with :func:`api.app.create_app`.

It never imports ``workers/`` or torch.
"""
