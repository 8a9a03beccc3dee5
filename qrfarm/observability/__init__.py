"""Metrics, structured logs and traces, shared by every service.

Imports nothing of qrfarm but the settings, so that every part may use it.
"""
