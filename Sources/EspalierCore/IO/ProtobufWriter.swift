// The protobuf wire format, written by hand: varints, fixed 32/64-bit values, length-delimited
// bytes and nested messages, and packed repeated numbers. Enough for TensorBoard's event files
// (TensorBoard.swift) and ONNX models (ONNX.swift); there is no reader.

/// Protobuf wire format, the field kinds TensorBoard's event messages and ONNX's model use.
public struct ProtobufWriter {
    public private(set) var bytes: [UInt8] = []
    public init() {}

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }

    mutating func key(_ field: Int, _ wireType: UInt64) { varint(UInt64(field) << 3 | wireType) }

    /// int64 / int32 (varint; negative values as ten bytes, two's complement).
    public mutating func int(_ field: Int, _ value: Int64) { key(field, 0); varint(UInt64(bitPattern: value)) }
    public mutating func double(_ field: Int, _ value: Double) { key(field, 1); bytes += TFRecord.littleEndian(value.bitPattern) }
    public mutating func float(_ field: Int, _ value: Float) { key(field, 5); bytes += TFRecord.littleEndian(value.bitPattern) }
    public mutating func bytes(_ field: Int, _ value: [UInt8]) { key(field, 2); varint(UInt64(value.count)); bytes += value }
    public mutating func string(_ field: Int, _ value: String) { bytes(field, Array(value.utf8)) }
    public mutating func message(_ field: Int, _ value: ProtobufWriter) { bytes(field, value.bytes) }
    /// A packed repeated double (one length-delimited field).
    public mutating func packedDoubles(_ field: Int, _ values: [Double]) {
        bytes(field, values.flatMap { TFRecord.littleEndian($0.bitPattern) })
    }
    /// A packed repeated float.
    public mutating func packedFloats(_ field: Int, _ values: [Float]) {
        bytes(field, values.flatMap { TFRecord.littleEndian($0.bitPattern) })
    }
    /// A packed repeated int64 (varints).
    public mutating func packedInts(_ field: Int, _ values: [Int64]) {
        var inner = ProtobufWriter()
        for v in values { inner.varint(UInt64(bitPattern: v)) }
        bytes(field, inner.bytes)
    }
}
