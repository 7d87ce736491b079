"""RQ job functions, the in-process worker class, progress and cancellation."""

from .queue import enqueue, get_queue

__all__ = ["enqueue", "get_queue"]
