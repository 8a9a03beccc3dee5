"""Webhooks: the outbox rows written where a job or prefetch ends, where a
callback may point, Standard Webhooks signatures, and delivery.

This room sits below ``jobs``: the life cycle writes the outbox row in the
transaction that ends a job, so ``jobs`` calls in here, and nothing here
imports ``jobs`` (only ``models``, ``config`` and ``errors``).
"""
