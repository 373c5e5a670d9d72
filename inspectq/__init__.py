"""inspectq's shared core: the domain's nouns and the stores, used by the API, the workers
and the ``inspectq`` command alike. It never imports ``api/``, ``workers/`` or torch.

Read in this order: ``result`` (what an inspection concludes: decision, score, regions,
model, thresholds, timings), ``jobs`` (the job record and its store), ``keyspace`` (every
Redis and S3 key), ``config`` (every setting), ``storage`` (S3), ``queue`` (the Celery app
both sides share), ``backends`` (S3 + Redis + job records, built per process),
``endings`` (long-poll wake-ups), ``connections`` (Redis client with timeouts).
"""
