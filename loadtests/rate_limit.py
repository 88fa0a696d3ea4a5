"""The 429 prober: limit accuracy, Retry-After, recovery, fairness, retry amplification.

    locust -f loadtests RateLimitUser --host http://relay:3000 --relay-key sk-... \
        --rate-limit 60/60s --headless -t 10m

One prober runs per test (``fixed_count = 1``), whatever ``-u`` says; the run ends when it is
done if it is the only scenario. Phases and metrics: ``relaygate.load.prober``.
"""

from locust import run_single_user, task

from relaygate.load.locust_plugin import RelaygateUser, finish_prober


class RateLimitUser(RelaygateUser):
    """Runs every ``--rl-phases`` phase once against ``--relay-key`` (and fairness keys)."""

    fixed_count = 1

    @task
    def probe_rate_limit(self) -> None:
        finish_prober(self)


if __name__ == "__main__":
    run_single_user(RateLimitUser)
