"""gunicorn settings for the ingest API.

    gunicorn -c api/gunicorn.conf.py --bind 0.0.0.0:8080 'api.app:create_app()'

One process with threads: requests wait on S3 and Redis (and long-polls wait up to
``max_wait_s``), and Pillow decodes with the GIL released, so threads serve them well. Scale
out with more processes or pods; each one's ``/metrics`` is scraped on its own.

On SIGTERM gunicorn stops accepting and lets in-flight requests finish for
``graceful_timeout`` seconds. The longest legitimate request is a long-poll of
``max_wait_s`` (30 s by default), so the grace is that plus a margin: a rolling deploy never
cuts a client off. Orchestrators must allow at least as long before SIGKILL
(Kubernetes: ``terminationGracePeriodSeconds`` >= 45).
"""

from api import server_errors
from inspectq.config import Settings

_settings = Settings()
server_errors.install()  # gunicorn's own 400/414/431 answers are JSON too

worker_class = "gthread"
workers = 1
threads = 32
graceful_timeout = int(_settings.max_wait_s) + 10
# A worker that does not report for this long is restarted; above the longest request.
timeout = int(_settings.max_wait_s) + 30
keepalive = 5
# No gunicornc control socket: its default path is per user, so two API processes on one
# host (tests, the dev stack) would fight over it; SIGTERM/SIGHUP are all we use.
control_socket_disable = True
# Access log to stdout: method, path, status, size, time. Never the query string or headers:
# a client that sends its API key as `?api_key=...` (or anything secret in any field) must
# not find it in the log, so nothing a client chooses besides the path is written.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
