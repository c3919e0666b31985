"""The worker: the loop, its round trips, lease renewal, maintenance and the pools."""

from .loop import DEFAULT_THREAD_SLOTS, Worker

__all__ = ["DEFAULT_THREAD_SLOTS", "Worker"]
