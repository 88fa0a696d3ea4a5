"""Streaming chat completions through the relay: TTFT, ITL, TPOT, e2e per stream.

    locust -f loadtests --host http://relay:3000 --relay-key sk-... --headless -u 200 -r 50 -t 2m

Without ``--host`` the embedded stack (mock upstream + reference relay) is started and used.
Timer definitions, metrics and options: ``docs/load.md``.
"""

from locust import run_single_user, task

from relaygate.load.locust_plugin import RelaygateUser


class StreamingChatUser(RelaygateUser):
    """One stream at a time (closed loop); paced by ``--target-rps`` (open loop) when given."""

    @task
    def chat_completions_stream(self) -> None:
        self.stream_chat()


if __name__ == "__main__":
    run_single_user(StreamingChatUser)
