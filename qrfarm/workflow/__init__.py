"""Workflow around the job life cycle: prefetch rules and priors, HL7 order
handling, identity, and the audit trail's writer. Uses jobs and models only."""
