"""Celery workers: the app, the tasks, and each process's associations and permits."""
