"""Frame-index stamps, so that a frame can be followed from the camera to the pipeline.

Two stamps per frame of a bench clip, both the frame's index in the clip:
- in the pixels: 12 black/white 16x16 blocks along the top-left edge (read back from a decoded
  frame by the worker tap, at a cost of microseconds);
- in the bitstream: an H.264 SEI "user data unregistered" NAL unit carrying `SEI_UUID` + 8 digits
  (read from RTSP packets by the probe without decoding, so it can watch many streams cheaply).
Only numpy here: the worker tap imports this module.
"""

from __future__ import annotations

import numpy as np

BITS = 12  # clip frames < 4096
BLOCK = 16
SEI_UUID = b"FLEETBENCHSTAMP!"  # 16 bytes, no zero bytes (so no emulation prevention is ever needed)


def stamp(image: np.ndarray, index: int) -> None:
    """Draw `index` into the top-left corner of a BGR image, in place."""
    for b in range(BITS):
        bit = (index >> (BITS - 1 - b)) & 1
        image[0:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255 if bit else 0


def read_stamp(image: np.ndarray) -> int | None:
    """The index drawn by `stamp`, or None when the corner does not hold a clean stamp."""
    if image.ndim != 3 or image.shape[0] < BLOCK or image.shape[1] < BITS * BLOCK:
        return None
    # centre 8x8 of each block, green channel
    strip = image[4:12, : BITS * BLOCK, 1].reshape(8, BITS, BLOCK)[:, :, 4:12].mean(axis=(0, 2))
    if np.any((strip > 64) & (strip < 191)):
        return None
    value = 0
    for v in strip:
        value = (value << 1) | int(v >= 128)
    return value


def sei_nal(index: int) -> bytes:
    """One SEI NAL unit (type 6, payload type 5 = user data unregistered) carrying `index`."""
    payload = SEI_UUID + b"%08d" % index
    return b"\x06" + bytes([5, len(payload)]) + payload + b"\x80"


def read_sei(packet: bytes) -> int | None:
    i = packet.find(SEI_UUID)
    if i < 0:
        return None
    digits = packet[i + 16:i + 24]
    return int(digits) if digits.isdigit() else None
