// TensorBoard event files, written without TensorFlow: a small protobuf wire-format writer for
// the few messages TensorBoard reads (tensorflow/core/util/event.proto: Event{wall_time=1 double,
// step=2 int64, file_version=3 string, summary=5 Summary}; tensorflow/core/framework/summary.proto:
// Summary{value=1 repeated Value{tag=1, simple_value=2 float, image=4 Image{height=1, width=2,
// colorspace=3, encoded_image_string=4}, histo=5 HistogramProto{min=1, max=2, num=3, sum=4,
// sum_squares=5, bucket_limit=6 packed, bucket=7 packed}}}), in TFRecord framing: uint64 length
// (little-endian), masked CRC-32C of those 8 bytes, the data, masked CRC-32C of the data.
// A writer makes `events.out.tfevents.<unix seconds>.<host>` in its folder (`tensorboard --logdir`
// reads every such file under it), starts it with the file_version event "brain.Event:2" (and,
// for a run that continues another, a SessionLog START event: Event.session_log=7,
// SessionLog.status=1) and appends one event per call, flushed at once so a killed run keeps
// what it wrote.

import Foundation

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord frames use it.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
    public static func masked<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        let c = checksum(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }
}

/// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
public enum TFRecord {
    public static func frame(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 16)
        let length = littleEndian(UInt64(data.count))
        out += length
        out += littleEndian(CRC32C.masked(length))
        out += data
        out += littleEndian(CRC32C.masked(data))
        return out
    }

    /// The records of a framed stream, each checked (length and data CRCs); nil if any is damaged or cut short.
    public static func records(_ bytes: [UInt8]) -> [[UInt8]]? {
        var out: [[UInt8]] = []
        var i = 0
        func uint<T: FixedWidthInteger & UnsignedInteger>(_ at: Int, _: T.Type) -> T {
            (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[at + $1]) << (8 * $1) }
        }
        while i < bytes.count {
            // A record is at least 16 bytes: length (8), its CRC (4), the data's CRC (4). Checked
            // before any subtraction: a negative remainder would wrap in an unchecked build.
            guard bytes.count - i >= 16 else { return nil }
            let length = uint(i, UInt64.self)
            guard uint(i + 8, UInt32.self) == CRC32C.masked(bytes[i..<i + 8]), length <= UInt64(bytes.count - i - 16) else { return nil }
            let start = i + 12, end = start + Int(length)
            guard uint(end, UInt32.self) == CRC32C.masked(bytes[start..<end]) else { return nil }
            out.append(Array(bytes[start..<end]))
            i = end + 4
        }
        return out
    }

    static func littleEndian<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
    }
}

/// A histogram as TensorBoard draws it: bucket i counts the values in (limit[i-1], limit[i]]
/// (the first from `min`); equal-width buckets from the smallest value to the largest.
public struct TensorBoardHistogram: Equatable, Sendable {
    public var min = 0.0, max = 0.0, num = 0.0, sum = 0.0, sumSquares = 0.0
    public var bucketLimits: [Double] = [], buckets: [Double] = []

    public init(_ values: [Double], bucketCount: Int = 30) {
        guard let lo = values.min(), let hi = values.max() else { return }
        min = lo; max = hi; num = Double(values.count)
        sum = values.reduce(0, +); sumSquares = values.reduce(0) { $0 + $1 * $1 }
        let n = hi > lo ? Swift.max(bucketCount, 1) : 1
        let width = (hi - lo) / Double(n)
        bucketLimits = (1...n).map { $0 == n ? hi : lo + width * Double($0) }
        buckets = Array(repeating: 0, count: n)
        // Each value in the bucket of the first limit ≥ it (the last limit is the maximum).
        for v in values { buckets[bucketLimits.firstIndex { v <= $0 } ?? n - 1] += 1 }
    }

    var proto: ProtobufWriter {
        var p = ProtobufWriter()
        p.double(1, min); p.double(2, max); p.double(3, num); p.double(4, sum); p.double(5, sumSquares)
        p.packedDoubles(6, bucketLimits); p.packedDoubles(7, buckets)
        return p
    }
}

/// A PNG's width, height and TensorBoard colorspace (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) from its
/// IHDR chunk; nil when `png` is not a PNG.
public func pngHeader(_ png: [UInt8]) -> (width: Int, height: Int, colorspace: Int)? {
    let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    guard png.count >= 33, Array(png[0..<8]) == signature, Array(png[12..<16]) == Array("IHDR".utf8) else { return nil }
    func be32(_ at: Int) -> Int { (0..<4).reduce(0) { $0 << 8 | Int(png[at + $1]) } }
    // IHDR colour type: 0 grey, 2 RGB, 3 palette (RGB), 4 grey + alpha, 6 RGBA.
    let colorspace: Int
    switch png[25] {
    case 0: colorspace = 1
    case 4: colorspace = 2
    case 6: colorspace = 4
    default: colorspace = 3
    }
    return (be32(16), be32(20), colorspace)
}

/// One value of a summary.
public enum TensorBoardValue: Sendable {
    case scalar(String, Float)
    case histogram(String, TensorBoardHistogram)
    /// A PNG image (its size and colours are read from its header).
    case image(String, png: [UInt8])

    var proto: ProtobufWriter? {
        var v = ProtobufWriter()
        switch self {
        case let .scalar(tag, x):
            v.string(1, tag); v.float(2, x)
        case let .histogram(tag, h):
            v.string(1, tag); v.message(5, h.proto)
        case let .image(tag, png):
            guard let header = pngHeader(png) else { return nil }
            var image = ProtobufWriter()
            image.int(1, Int64(header.height)); image.int(2, Int64(header.width)); image.int(3, Int64(header.colorspace))
            image.bytes(4, png)
            v.string(1, tag); v.message(4, image)
        }
        return v
    }
}

/// The serialized Event protobufs a writer frames.
public enum TensorBoardEvent {
    public static func fileVersion(wallTime: Double) -> [UInt8] {
        var e = ProtobufWriter()
        e.double(1, wallTime); e.string(3, "brain.Event:2")
        return e.bytes
    }

    /// SessionLog{status=START} at `step` (Event.session_log = 7): TensorBoard's reader then drops
    /// the events of earlier files at `step` and after, which a restarted run writes again.
    public static func sessionStart(step: Int, wallTime: Double) -> [UInt8] {
        var log = ProtobufWriter()
        log.int(1, 1)
        var e = ProtobufWriter()
        e.double(1, wallTime); e.int(2, Int64(step)); e.message(7, log)
        return e.bytes
    }

    /// An event with a summary of `values` (those that cannot be encoded, a damaged PNG, left out).
    public static func summary(step: Int, wallTime: Double, values: [TensorBoardValue]) -> [UInt8] {
        var s = ProtobufWriter()
        for v in values { if let p = v.proto { s.message(1, p) } }
        var e = ProtobufWriter()
        e.double(1, wallTime); e.int(2, Int64(step)); e.message(5, s)
        return e.bytes
    }
}

/// Appends events to a new event file in `directory` (created if needed).
public final class TensorBoardWriter {
    public let path: String
    private let handle: FileHandle

    /// `restartAt`: the first step this writer writes, when a run continues one that may have
    /// written that step and later ones already (a resumed search): a session start there.
    public init(directory: String, restartAt: Int? = nil, wallTime: Double = Date().timeIntervalSince1970) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw EspalierError.data(file: directory, problem: "cannot create the TensorBoard folder (\(error.localizedDescription)); choose another output folder")
        }
        // A second writer in the same second (a quick resume) gets its own file, sorted after the first.
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        let base = (directory as NSString).appendingPathComponent("events.out.tfevents.\(Int(wallTime)).\(host.isEmpty ? "localhost" : host)")
        var candidate = base, n = 0
        while FileManager.default.fileExists(atPath: candidate) { n += 1; candidate = base + ".\(n)" }
        path = candidate
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw EspalierError.data(file: path, problem: "cannot create the TensorBoard event file; choose another output folder")
        }
        handle = h
        try append(TensorBoardEvent.fileVersion(wallTime: wallTime))
        if let step = restartAt { try append(TensorBoardEvent.sessionStart(step: step, wallTime: wallTime)) }
    }

    deinit { try? handle.close() }

    /// Writes one event holding `values` at `step`.
    public func write(step: Int, values: [TensorBoardValue], wallTime: Double = Date().timeIntervalSince1970) throws {
        try append(TensorBoardEvent.summary(step: step, wallTime: wallTime, values: values))
    }

    private func append(_ event: [UInt8]) throws {
        do {
            try handle.write(contentsOf: Data(TFRecord.frame(event)))
            try handle.synchronize()
        } catch {
            throw EspalierError.data(file: path, problem: "cannot write the TensorBoard event file (\(error.localizedDescription))")
        }
    }
}
