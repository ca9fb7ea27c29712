"""The wire format between the server and a device, as Flower records.

Messages
- server -> device (train, evaluate): {"arrays": ArrayRecord(global shared adapter),
  "config": ConfigRecord(FederationConfig + "server-round", "sample-rate", "labels", "base-sha256")}
- device -> server (train): {"update": ArrayRecord({"flat": all tensors in one array}), "header":
  ConfigRecord(UpdateHeader + names/ndims/dims (+ int8 scales)), "metrics": MetricRecord("bytes-up",
  "epsilon")}, or, when the device declines, {"header": ConfigRecord(device_id, declined=<reason>)}
  and no arrays.
- device -> server (evaluate): {"metrics": MetricRecord(top1, top5, global-top1, global-top5, num-test)}
  and {"header": ConfigRecord(device_id)}.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.update import Arrays, Update, UpdateRejected, WireUpdate, decode

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, RecordDict

FLAT = "flat"


def arrays_to_record(arrays: Arrays) -> "ArrayRecord":
    """Numpy dict -> Flower ArrayRecord (dtypes kept: int8 stays int8)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def record_to_arrays(record: "ArrayRecord") -> Arrays:
    """Flower ArrayRecord -> numpy dict."""
    return {name: array.numpy() for name, array in record.items()}


def wire_to_content(wire: WireUpdate, metrics: dict[str, float]) -> "RecordDict":
    """The reply content of a train message.

    All tensors travel as ONE flat array (names, ranks and dims in the header): Flower adds a
    few hundred bytes of framing per array, which would otherwise eat int8's saving.
    """
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    names = sorted(wire.arrays)
    flat = np.concatenate([np.ravel(wire.arrays[n]) for n in names]) if names else np.zeros(0, np.float32)
    header: dict[str, Any] = dict(wire.header) | {
        "names": names,
        "ndims": [int(np.ndim(wire.arrays[n])) for n in names],
        "dims": [int(d) for n in names for d in np.shape(wire.arrays[n])] or [0],
    }
    if wire.scales:
        header["scales"] = [float(wire.scales[n]) for n in names]
    return RecordDict({"update": arrays_to_record({FLAT: flat}), "header": ConfigRecord(header), "metrics": MetricRecord(metrics)})


def unpack(header: dict[str, Any], flat: np.ndarray) -> WireUpdate:
    """Inverse of `wire_to_content`'s packing; a size mismatch is a 'wrong-shape' rejection."""
    try:
        names, ndims, dims = list(header["names"]), [int(x) for x in header["ndims"]], [int(x) for x in header["dims"]]
        scales = [float(x) for x in header.get("scales", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejected("bad-header", f"header lacks names/ndims/dims ({exc!r})") from exc
    if len(ndims) != len(names) or (scales and len(scales) != len(names)) or sum(ndims) > len(dims):
        raise UpdateRejected("bad-header", "names, ranks, dims and scales do not line up")
    arrays, offset, at = {}, 0, 0
    for name, ndim in zip(names, ndims):
        shape = tuple(dims[at:at + ndim])
        at += ndim
        size = math.prod(shape)
        if offset + size > flat.size:
            raise UpdateRejected("wrong-shape", f"payload has {flat.size} values, header describes more ({name})")
        arrays[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    if offset != flat.size:
        raise UpdateRejected("wrong-shape", f"payload has {flat.size} values, header describes {offset}")
    plain = {k: v for k, v in header.items() if k not in ("names", "ndims", "dims", "scales")}
    return WireUpdate(plain, arrays, dict(zip(names, scales)))


def content_to_update(content: "RecordDict") -> Update:
    """Decode a train reply (malformed -> UpdateRejected 'bad-header' / 'wrong-shape')."""
    try:
        header = dict(content["header"])
        flat = content["update"][FLAT].numpy()
    except (KeyError, TypeError) as exc:
        raise UpdateRejected("bad-header", f"reply lacks update/header records ({exc!r})") from exc
    return decode(unpack(header, np.asarray(flat)))


def content_nbytes(content: "RecordDict") -> int:
    """Bytes the device uploads for this content: every serialised Flower object in its tree.

    Walks the records' public `children` / `deflate()`; an object shared by two parents (same
    `object_id`) is sent once, so it is counted once.
    """
    seen: dict[str, int] = {}
    stack = [content]
    while stack:
        obj = stack.pop()
        if obj.object_id in seen:
            continue
        seen[obj.object_id] = len(obj.deflate())
        stack.extend((obj.children or {}).values())
    return int(sum(seen.values()))
