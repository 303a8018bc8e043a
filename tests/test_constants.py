"""The numbers several modules must agree on: how they relate, and what README promises of them."""

from __future__ import annotations

import pytest

from notify import constants as c
from notify.broker.routing import route, task_queues
from notify.delivery.gate import PriorityGate
from notify.models import Priority
from notify.settings import Secret, Settings

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
LEASES = [c.LEASE_MIN, 3.0, 6.0, 10.0, c.LEASE_MAX]


def test_priorities_are_defined_once_in_draining_order() -> None:
    assert [p.value for p in Priority] == ["high", "normal", "low"]
    assert [p.rank for p in Priority] == [0, 1, 2]
    assert [p for p in Priority if p.urgent] == [Priority.HIGH]


def test_queues_rabbitmq_numbers_and_the_gate_all_follow_the_one_definition() -> None:
    assert c.channel_queues("email") == ["notify.email.high", "notify.email.normal", "notify.email.low"]
    assert [route(AMQP, "email", p)["priority"] for p in Priority] == [2, 1, 0]
    [queue, *_] = task_queues(AMQP)
    assert queue.queue_arguments == {"x-max-priority": 2}
    assert PriorityGate().urgent == frozenset({"high"})


@pytest.mark.parametrize("lease", LEASES)
def test_a_lapsed_claim_is_swept_within_the_recovery_bound(lease: float) -> None:
    settings = Settings(lease_seconds=lease)
    assert settings.lease + settings.sweep_every <= c.LEASE_MAX + c.SWEEP_EVERY_MAX < c.RECOVERY_BOUND


@pytest.mark.parametrize("lease", LEASES)
def test_the_heartbeat_renews_a_claim_at_least_twice_within_its_lease(lease: float) -> None:
    settings = Settings(lease_seconds=lease)
    assert settings.heartbeat_every <= settings.lease / 3
    assert settings.heartbeat_every <= c.HEARTBEAT_EVERY_MAX


def test_a_bursts_waiting_deliveries_are_stamped_before_the_sweep_takes_them_for_lost() -> None:
    # Two beats fit in the grace: one beat missed to a busy store does not cost a republish.
    assert 2 * c.HEARTBEAT_EVERY_MAX < c.QUEUED_GRACE
    assert c.QUEUED_GRACE < c.SWEEP_AFTER_MIN  # beside empty queues sooner than behind a backlog


def test_what_is_due_is_released_within_the_send_at_bound() -> None:
    assert Settings().release_every == c.RELEASE_EVERY
    assert 2 * c.RELEASE_EVERY <= c.SEND_AT_BOUND  # released, then published and claimed


def test_a_store_outage_countdown_is_shorter_than_any_visibility_timeout() -> None:
    assert c.STORE_RETRY_MAX < c.VISIBILITY_TIMEOUT_MIN
    assert c.STORE_RETRY_PAUSE_MAX < c.SWEEP_EVERY_MAX


def test_the_gate_holds_lower_attempts_far_shorter_than_any_lease() -> None:
    assert c.GATE_HOLD * 4 <= c.LEASE_MIN


def test_the_heartbeat_keeps_renewing_while_smtp_waits_its_rfc_5321_reply() -> None:
    from notify.delivery.attempt import Deliverer

    settings = Settings(delivery_timeout=30.0, database_url=Secret("sqlite://"))
    deliverer = Deliverer(settings)
    try:
        assert deliverer.heartbeat.ceiling > settings.delivery_timeout + c.RFC5321_DATA_REPLY
    finally:
        deliverer.close()


def test_a_producer_never_waits_on_the_broker_longer_than_its_exit_flush() -> None:
    assert c.BROKER_TIMEOUT < c.EXIT_FLUSH_TIMEOUT
