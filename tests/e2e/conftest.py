"""A whole, isolated inspectq stack for the end-to-end tests: SeaweedFS, the real CPU
``tritonserver`` with the shipped model, a Celery worker, the indexer and the API under
gunicorn, on free ports, with the machine's Redis (DB 12) and PostgreSQL (database
``inspectq_e2e``, reached through a :class:`TcpProxy` a test can cut). Nothing is mocked.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import make_url

from devstack.client import InspectqClient
from devstack.ports import free_port
from devstack.stack import StackConfig, down, isolated_config, up
from tests.conftest import fresh_postgres
from tests.tcp_proxy import TcpProxy

REDIS_DB = 12
#: Where the stack sends alerts (fixed at start-up): test_alerts_e2e.py starts a real SMTP
#: server and an HTTP receiver standing in for Slack on these ports.


def _reserved_range_port(start: int) -> int:
    """A free port below the kernel's ephemeral range, which ``free_port()`` draws from: the
    stack is configured with these ports long before the alert test binds them, and a port
    from the ephemeral range could be handed to another server meanwhile."""
    for port in range(start, start + 500):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port from {start}")


ALERT_SMTP_PORT = _reserved_range_port(21500)
ALERT_SLACK_PORT = _reserved_range_port(ALERT_SMTP_PORT + 1)
ALERT_SLACK_URL = f"http://127.0.0.1:{ALERT_SLACK_PORT}/services/T0/B0/e2e"


@pytest.fixture(scope="session")
def database_proxy() -> Iterator[TcpProxy]:
    """The stack's way to PostgreSQL; ``cut()`` makes the database unreachable."""
    proxy = TcpProxy(("127.0.0.1", 5432), free_port())
    proxy.restore()
    yield proxy
    proxy.cut()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, database_proxy: TcpProxy
          ) -> Iterator[StackConfig]:
    direct = make_url(fresh_postgres("inspectq_e2e"))
    through_proxy = direct.set(port=database_proxy.port).render_as_string(hide_password=False)
    config = isolated_config(tmp_path_factory.mktemp("stack"), REDIS_DB, s3_bucket="e2e",
                             database_url=through_proxy,
                             # the tests' receivers listen on 127.0.0.1; retries every <=8 s
                             callback_allow_private=True, callback_retry_max_s=8,
                             # alerts go to the receivers test_alerts_e2e.py starts
                             smtp_host="127.0.0.1", smtp_port=ALERT_SMTP_PORT,
                             alert_email_to="qa@factory.example",
                             slack_webhook_url=SecretStr(ALERT_SLACK_URL),
                             alert_retry_base_s=0.5, alert_retry_max_s=8)
    redis.Redis.from_url(config.settings.redis_url).flushdb()
    try:
        up(config)
        yield config
    finally:
        down(config)


@pytest.fixture(scope="session")
def client(stack: StackConfig) -> InspectqClient:
    return InspectqClient(stack.api_url, stack.settings.api_key.get_secret_value())
