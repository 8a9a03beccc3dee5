"""Delivery to destinations: forwarding what the farm holds, verification at
the destination, the transports that carry it there, pseudonymising.

Uses jobs/ and models/ (and dicom/ for the wire); never the faces or the
services. The worker wires its runner for forward jobs into the job runner.
"""
