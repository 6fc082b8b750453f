"""Fleet buckets against a fake Redis side: leases in batches in the background, never one Redis call per
request, the local share while Redis is away, and back to leasing after."""

from __future__ import annotations

import asyncio

from sidecar.config.shared import FleetSettings
from sidecar.state.fleet import FleetBucket


class FakeFleet:
    """Grants from a shared pool; ``down`` makes leases fail as a shut gate would."""

    def __init__(self, pool: int) -> None:
        self.settings = FleetSettings(("d",), 2)
        self.pool = pool
        self.leases = 0
        self.fallbacks = 0
        self.down = False
        self.tasks: set[asyncio.Task[None]] = set()

        class Gate:
            open = True
        self.gate = Gate()

    async def lease(self, key: str, per_second: float, burst: float, want: int) -> int | None:
        self.leases += 1
        if self.down:
            return None
        granted = min(want, self.pool)
        self.pool -= granted
        return granted

    def spawn(self, coroutine: object) -> None:
        task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def settle(fleet: FakeFleet) -> None:
    while fleet.tasks:
        await asyncio.gather(*fleet.tasks)


async def test_requests_spend_leased_batches_and_the_fleet_limit_holds() -> None:
    fleet = FakeFleet(pool=600)  # what the whole fleet may send this minute
    bucket = FleetBucket(fleet, "k", 600, 2)  # type: ignore[arg-type]
    assert bucket.batch == 30  # a tenth of this pod's share of 300
    bucket._lease_soon()
    await settle(fleet)
    granted = 0
    for _ in range(1000):
        if bucket.take(1, 0.0) == 0:
            granted += 1
        await settle(fleet)
    assert granted == 600  # never more than the fleet had
    assert fleet.leases <= 600 / 30 + 3  # batches, and no lease per request once the fleet is out
    assert bucket.take(1, 0.0) > 0


async def test_redis_away_means_this_pods_share_then_leasing_again() -> None:
    fleet = FakeFleet(pool=10_000)
    bucket = FleetBucket(fleet, "k", 120, 2)  # type: ignore[arg-type]
    fleet.down = True
    bucket._lease_soon()
    await settle(fleet)
    assert not bucket.shared and fleet.leases == 1
    allowed = sum(bucket.take(1, 0.0) == 0 for _ in range(100))
    assert allowed == 60  # 120 / 2 pods, a minute's burst
    fleet.down = False
    assert fleet.tasks == set() and bucket.retry_at > 0  # while down: a look at Redis a second at most
    bucket.retry_at = 0.0  # a second later
    bucket._lease_soon()
    await settle(fleet)
    assert bucket.shared and bucket.take(1, 0.0) == 0


async def test_a_tpm_debt_is_paid_from_the_next_lease() -> None:
    fleet = FakeFleet(pool=10_000)
    bucket = FleetBucket(fleet, "k", 10_000, 1)  # type: ignore[arg-type]
    bucket._lease_soon()
    await settle(fleet)
    assert bucket.take(900, 0.0) == 0
    bucket.consume(500, 0.0)  # the answer used 500 more tokens than estimated
    assert bucket.level < 0
    bucket._lease_soon()
    await settle(fleet)
    assert bucket.level == 1000  # -400 + a lease of 1000 + the 400 owed
