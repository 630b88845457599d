"""SentencePiece's tokenizer.model without the protobuf package: the few bits of protobuf needed to read a
model's settings, turn its dummy prefix off, and write a BPE model (from a GGUF file's vocabulary)."""

import struct


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _proto_fields(buf: bytes):
    """Yield (field number, wire type, start of field, start of payload, end) for each field of a message."""
    pos = 0
    while pos < len(buf):
        key, payload = _read_varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, end = _read_varint(buf, payload)
        elif wire == 1:
            end = payload + 8
        elif wire == 5:
            end = payload + 4
        elif wire == 2:
            length, payload = _read_varint(buf, payload)
            end = payload + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if end > len(buf):
            raise ValueError("truncated protobuf field")
        yield key >> 3, wire, pos, payload, end
        pos = end


# field numbers in sentencepiece_model.proto
PIECES, TRAINER_SPEC, NORMALIZER_SPEC = 1, 2, 3  # ModelProto
PIECE, SCORE, TYPE = 1, 2, 3  # ModelProto.SentencePiece
MODEL_TYPE, BYTE_FALLBACK, UNK_ID, BOS_ID, EOS_ID, PAD_ID = 3, 35, 40, 41, 42, 43  # TrainerSpec
NAME, ADD_DUMMY_PREFIX, REMOVE_EXTRA_WHITESPACES = 1, 3, 4  # NormalizerSpec
BPE_MODEL = 2  # TrainerSpec.model_type; 1, unigram, is the default
PIECE_BYTE = 6  # SentencePiece.type: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte


def spec_value(model: bytes, spec: int, field: int, default: int) -> int:
    """A varint field of the model's TrainerSpec or NormalizerSpec; the last occurrence wins, as in protobuf."""
    value = default
    for model_field, wire, _, payload, end in _proto_fields(model):
        if model_field == spec and wire == 2:
            body = model[payload:end]
            for spec_field, spec_wire, _, spec_payload, _ in _proto_fields(body):
                if spec_field == field and spec_wire == 0:
                    value = _read_varint(body, spec_payload)[0]
    return value


def _varint_field(field: int, value: int) -> bytes:
    return _encode_varint(field << 3) + _encode_varint(value & 0xFFFFFFFFFFFFFFFF)  # negative ints take 10 bytes


def _bytes_field(field: int, body: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(body)) + body


def without_dummy_prefix(model: bytes) -> bytes:
    """The ModelProto with add_dummy_prefix off. Protobuf merges repeated occurrences of a message field and
    keeps the last value of a scalar one, so an appended NormalizerSpec{add_dummy_prefix: false} overrides it."""
    return model + _bytes_field(NORMALIZER_SPEC, _varint_field(ADD_DUMMY_PREFIX, 0))


def sentencepiece_model(
    pieces: list[tuple[str, float, int]], unk_id: int, bos_id: int, eos_id: int, pad_id: int, add_dummy_prefix: bool
) -> bytes:
    """A SentencePiece BPE ModelProto (a tokenizer.model's bytes) from (piece, score, type) triples; an id of -1
    means none. No normalization besides ' ' -> '▁' and the dummy prefix, as llama.cpp does."""
    body = bytearray()
    for piece, score, piece_type in pieces:
        entry = _bytes_field(PIECE, piece.encode()) + _encode_varint(SCORE << 3 | 5) + struct.pack("<f", score)
        body += _bytes_field(PIECES, entry + _varint_field(TYPE, piece_type))
    byte_fallback = any(piece_type == PIECE_BYTE for _, _, piece_type in pieces)
    trainer = [
        (MODEL_TYPE, BPE_MODEL),
        (BYTE_FALLBACK, byte_fallback),
        (UNK_ID, unk_id),
        (BOS_ID, bos_id),
        (EOS_ID, eos_id),
        (PAD_ID, pad_id),
    ]
    body += _bytes_field(TRAINER_SPEC, b"".join(_varint_field(field, value) for field, value in trainer))
    normalizer = _bytes_field(NAME, b"identity") + _varint_field(ADD_DUMMY_PREFIX, add_dummy_prefix)
    body += _bytes_field(NORMALIZER_SPEC, normalizer + _varint_field(REMOVE_EXTRA_WHITESPACES, 0))
    return bytes(body)
