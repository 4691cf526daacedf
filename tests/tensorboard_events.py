"""Reading the scalars of TensorBoard event files (tensorboardX's protobuf; tensorboard itself is not installed)."""
from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every ``events.out.tfevents.*`` file in ``log_dir``, in file order.

    The files are TFRecord streams: a little-endian uint64 length, its CRC, the serialised ``Event``, its CRC.
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
