"""The relay's added latency: the same stream through the relay and directly upstream.

    locust -f loadtests RelayOverheadUser --host http://relay:3000 --relay-key sk-... \
        --upstream-url http://upstream:8000 --upstream-key sk-... --headless -u 20 -t 1m

Each user alternates relay and direct requests, so both see the same load and moment; the
summary's ``relay_overhead`` holds relay minus direct per percentile (TTFT, ack, e2e, ITL).
"""

from locust import run_single_user, task

from relaygate.load.locust_plugin import RelaygateUser


class RelayOverheadUser(RelaygateUser):
    """Alternates ``chat.stream`` (relay) and ``direct.chat.stream`` (upstream)."""

    @task
    def chat_completions_relay_and_direct(self) -> None:
        self.stream_chat()
        self.stream_direct()


if __name__ == "__main__":
    run_single_user(RelayOverheadUser)
