"""The external-data file names of an ONNX model, read from its protobuf bytes with the standard library only.

The runtime-only install (`pip install lmforge`) has no `onnx` package, yet must refuse a model whose weights
point outside its directory (`location: "../../etc/shadow"`) before onnxruntime opens them. An ONNX file is a
protobuf `ModelProto`; protobuf's wire format is a flat run of (field number, wire type, value) records, where
a length-delimited value may itself be a message. So this walks only the messages that can hold a tensor:

    ModelProto       graph = 7, training_info = 20, functions = 25
    TrainingInfo     initialization = 1, algorithm = 2 (graphs)
    FunctionProto    node = 7, attribute_proto = 11 (default attribute values)
    GraphProto       node = 1, initializer = 5, sparse_initializer = 15
    NodeProto        attribute = 5
    AttributeProto   t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23
    SparseTensor     values = 1, indices = 2
    TensorProto      external_data = 13  (StringStringEntryProto: key = 1, value = 2)

and collects the value of every external_data entry whose key is "location", in subgraphs (If/Loop/Scan
bodies) too. Everything else (weights in raw_data included) is skipped by its length without being read.
Field numbers: onnx/onnx.proto3. tests/test_security_onnx.py checks them against onnx's own descriptors and
compares the result with a walk of onnx's own parse.
"""
from __future__ import annotations

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = range(6)

# message kind -> {field number: kind of the length-delimited message in that field}
SCHEMA = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def fields(buf, start: int, end: int):
    """(field number, wire type, value) for each record of the message in buf[start:end]: an int for a varint,
    (start, stop) offsets for a length-delimited value, None for fixed-width values (skipped)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == LENGTH:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise WireError(f"field {number} runs past the end of its message ({n} bytes at byte {pos})")
            value, pos = (pos, pos + n), pos + n
        elif wire in (FIXED64, FIXED32):
            pos, value = pos + (8 if wire == FIXED64 else 4), None
            if pos > end:
                raise WireError(f"truncated fixed-width field {number}")
        else:  # groups are deprecated and no ONNX message uses them
            raise WireError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def external_data_locations(buf, start: int = 0, end: int | None = None) -> list[str]:
    """The sorted distinct `location` values of every tensor's external_data in the ModelProto buf[start:end].
    `buf` is anything indexable by int giving a byte and sliceable to bytes (bytes, mmap)."""
    end = len(buf) if end is None else end
    found: set[str] = set()
    stack = [("model", start, end)]
    while stack:  # explicit stack: a hostile nesting depth cannot exhaust Python's recursion limit
        kind, lo, hi = stack.pop()
        if kind == "entry":
            key = value = b""
            for number, wire, span in fields(buf, lo, hi):
                if wire == LENGTH and number == 1:
                    key = bytes(buf[span[0]:span[1]])
                elif wire == LENGTH and number == 2:
                    value = bytes(buf[span[0]:span[1]])
            if key == b"location":
                found.add(value.decode("utf-8", "replace"))
            continue
        children = SCHEMA[kind]
        for number, wire, span in fields(buf, lo, hi):
            if number in children:
                if wire != LENGTH:
                    raise WireError(f"{kind} field {number} should be a message, has wire type {wire}")
                stack.append((children[number], *span))
    return sorted(found)
