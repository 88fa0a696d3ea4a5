"""Load scenarios for OpenAI-compatible relays: exact streaming latency and 429 behaviour.

The locustfiles live in ``loadtests/`` (``locust -f loadtests``); everything they do lives
here, in modules that do **not** import Locust or gevent (so importing this package never
monkey-patches anything):

* :mod:`relaygate.load.client`     - timing HTTP/1.1 + SSE client (per-event arrival stamps)
  (its parts: :mod:`relaygate.load.http11` framing and pool, :mod:`relaygate.load.body_sinks`
  SSE events and the token fast path, :mod:`relaygate.load.stamps` kernel receive stamps)
* :mod:`relaygate.load.histogram`  - fixed-resolution mergeable histogram
* :mod:`relaygate.load.metrics`    - the registry and per-request recording
* :mod:`relaygate.load.outcomes`   - outcome classes
* :mod:`relaygate.load.pacer`      - open-loop schedule (constant / Poisson)
* :mod:`relaygate.load.prober`  - the 429 prober and its analysis
* :mod:`relaygate.load.slo`        - ``--slo`` rules
* :mod:`relaygate.load.selfcheck`  - loop lag / CPU self-check
* :mod:`relaygate.load.summary`, :mod:`relaygate.load.plots` - reports

Only :mod:`relaygate.load.locust_plugin` and the ``locust_*`` modules it is made of import
Locust; the locustfiles import it.
"""

from pathlib import Path

from relaygate.load.histogram import Histogram
from relaygate.load.metrics import Registry, record_result
from relaygate.load.slo import SLORule, parse_rule

__all__ = ["Histogram", "Registry", "SLORule", "loadtests_dir", "parse_rule", "record_result"]


def loadtests_dir() -> Path:
    """The locustfiles' folder (``locust -f <it>``): the checkout's, else the wheel's copy."""
    from relaygate.shipped import shipped_dir

    return shipped_dir("loadtests", "_loadtests", "streaming_chat.py")
