"""qrfarm: a DICOM query/retrieve farm.

The protocol layer lives in :mod:`qrfarm.dicom`; errors in :mod:`qrfarm.errors`.
"""

__version__ = "0.1.0"
