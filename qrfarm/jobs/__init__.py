"""The job life cycle: submitting, attempts, Message IDs of moves, reconciliation."""
