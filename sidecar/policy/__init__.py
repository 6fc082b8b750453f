"""Pure routing decisions: breakers, retries, stats, strategies, limits, plans.

Nothing here does I/O, reads a clock or draws its own randomness: ``now`` and ``rng`` are arguments, so
every decision can be replayed in a unit test with a fake clock and a seeded ``random.Random``.
"""
