"""Converting an instance for a destination that refuses its held transfer syntax.

Only to an uncompressed syntax the destination accepted, and only where the
forward allows it: a compressed instance is decoded with pydicom (which
decodes RLE Lossless itself, JPEG Baseline and JPEG 2000 through Pillow; JPEG
Lossless and JPEG-LS need pylibjpeg or GDCM, not installed: those are refused
with that said). Decoding a lossy syntax loses nothing more, but the data set
keeps saying it was lossy compressed (Lossy Image Compression stays "01").
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

from qrfarm.errors import SyntaxRefused


def converted(dataset: Dataset, target: str) -> Dataset:
    """``dataset`` (read whole) made uncompressed in place, to be sent in the
    uncompressed ``target`` the destination accepted."""
    held = UID(str(dataset.file_meta.TransferSyntaxUID))
    if held.is_compressed:
        try:
            # The instance stays the same instance: same SOP Instance UID.
            dataset.decompress(generate_instance_uid=False)
        except Exception as exc:
            raise SyntaxRefused(
                f"{held.name} ({held}) cannot be decoded here for conversion: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from exc
    # Now uncompressed (Explicit VR Little Endian when decoded): the sender
    # encodes it in ``target``, or whichever uncompressed syntax was accepted.
    del target
    return dataset


def _first_line(exc: Exception) -> str:
    # pydicom's messages name plugins and syntaxes (and what each one lacks),
    # never values of the data set.
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines)[:400]
