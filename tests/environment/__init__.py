"""The real test environment: a RabbitMQ cluster, PostgreSQL and a Kubernetes control plane
(plus, for ``tests/pods``, a real kubelet + containerd node: ``tests/environment/node.py``).

pytest fixtures (``tests/conftest.py``) start each part lazily, once per test session, the
first time a test asks for it. ``python -m tests.environment up`` starts the same parts by
hand for debugging and prints how to reach them; pytest then reuses them when
``TS_TESTENV_STATE`` points at the state file it writes.
"""

from tests.environment.processes import EnvironmentFailure, wait_until

__all__ = ["EnvironmentFailure", "wait_until"]
