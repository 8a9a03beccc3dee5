"""Synthetic DICOM data and stand-in peers for demos and tests."""
