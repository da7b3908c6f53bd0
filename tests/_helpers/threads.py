"""Run torch on one intra-op thread during a test: :func:`bastion.core.threads.one_thread`
(one implementation for the library and the tests; why one thread is explained there)."""

from __future__ import annotations

from bastion.core.threads import one_thread

__all__ = ["one_thread"]
