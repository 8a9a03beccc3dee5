"""The REST API for workflow engines (FastAPI): jobs, nodes, prefetches, health, metrics.

``qrfarm api`` serves it; :func:`qrfarm.api.app.create_app` builds it.
"""
