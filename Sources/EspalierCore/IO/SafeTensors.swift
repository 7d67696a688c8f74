// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of
// UTF-8 JSON `{"__metadata__": {string: string}, name: {"dtype", "shape", "data_offsets"}}`
// (padded with spaces to a multiple of 8), then the raw little-endian tensor bytes, the
// offsets relative to the start of that data block.
// Writing is deterministic: tensors sorted by name (byte order of their UTF-8), data laid out in
// that order, metadata keys sorted, no floating-point text, so the same state gives the same bytes.
// Reading checks everything: sizes, JSON, dtype, shapes, offsets (in range, matching the shape,
// no overlap, no gap, no trailing bytes); each error names the file and the tensor.
// A file may carry a checksum in its metadata (`espalier.checksum`, CRC-32 over every other
// metadata entry and every tensor's name, shape and bytes): `write(path:checksum: true)` adds it
// and reading verifies it whenever it is there, so an edited header value or flipped data byte
// is refused. Files without it (older ones, other tools') still read.
// Not here: dtypes other than F32, memory mapping, lazy loading of single tensors.

import CZlib
import Foundation

public struct SafeTensorsFile {
    /// One stored tensor: row-major float32 values of `shape`.
    public struct Entry: Equatable {
        public var shape: [Int]
        public var values: [Float]
        public init(shape: [Int], values: [Float]) { self.shape = shape; self.values = values }
    }

    /// Largest header accepted when reading (the limit of the reference implementation).
    public static let maxHeaderBytes = 100_000_000
    public static let metadataKey = "__metadata__"

    public var tensors: [String: Entry]
    public var metadata: [String: String]
    /// Where the file was read from (used in error messages); "<in memory>" otherwise.
    public var source: String

    /// Tensor names in file order (sorted by UTF-8 bytes).
    public var names: [String] { Self.sortedNames(tensors.keys) }

    public init(tensors: [String: Entry] = [:], metadata: [String: String] = [:], source: String = "<in memory>") {
        self.tensors = tensors
        self.metadata = metadata
        self.source = source
    }

    /// Copies the values of named tensors. Throws if a tensor is virtual (dry-run: no values).
    public init(named: [String: Tensor], metadata: [String: String] = [:]) throws {
        self.init(metadata: metadata)
        for (name, t) in named { try add(name, t) }
    }

    /// Adds (or replaces) a tensor, copying its values.
    public mutating func add(_ name: String, _ tensor: Tensor) throws {
        guard !tensor.isVirtual else {
            throw EspalierError.invalidArgument("tensor '\(name)' has no values (dry-run accountant); it cannot be saved")
        }
        tensors[name] = Entry(shape: tensor.shape, values: tensor.array)
    }

    public subscript(_ name: String) -> Entry? {
        get { tensors[name] }
        set { tensors[name] = newValue }
    }

    // MARK: Writing

    /// The file's bytes. Throws `invalidArgument` if an entry's values do not match its shape,
    /// a shape has a negative dimension, or a tensor is named `__metadata__`.
    public func encoded() throws -> Data {
        let order = names
        var header = "{"
        var first = true
        if !metadata.isEmpty {
            header += IOJSON.quoted(Self.metadataKey) + ":{"
            header += Self.sortedNames(metadata.keys).map { IOJSON.quoted($0) + ":" + IOJSON.quoted(metadata[$0]!) }.joined(separator: ",")
            header += "}"
            first = false
        }
        var offset = 0
        for name in order {
            let e = tensors[name]!
            guard name != Self.metadataKey else {
                throw EspalierError.invalidArgument("a tensor cannot be named \(Self.metadataKey) (reserved for the metadata); rename it")
            }
            guard e.shape.allSatisfy({ $0 >= 0 }) else {
                throw EspalierError.invalidArgument("tensor '\(name)' has a negative dimension in shape \(e.shape)")
            }
            let count = e.shape.reduce(1, *)
            guard count == e.values.count else {
                throw EspalierError.invalidArgument("tensor '\(name)': shape \(e.shape) needs \(count) values, it holds \(e.values.count)")
            }
            if !first { header += "," }
            first = false
            let end = offset + 4 * count
            header += IOJSON.quoted(name) + ":{\"dtype\":\"F32\",\"shape\":[" + e.shape.map(String.init).joined(separator: ",")
                + "],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        header += "}"
        var headerBytes = Array(header.utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }

        var out = Data(count: 8 + headerBytes.count + offset)
        out.withUnsafeMutableBytes { (raw: UnsafeMutableRawBufferPointer) in
            let base = raw.baseAddress!
            var n = UInt64(headerBytes.count).littleEndian
            withUnsafeBytes(of: &n) { base.copyMemory(from: $0.baseAddress!, byteCount: 8) }
            headerBytes.withUnsafeBytes { base.advanced(by: 8).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            var at = 8 + headerBytes.count
            for name in order {
                let values = tensors[name]!.values
                let dst = base.advanced(by: at)
                #if _endian(little)
                values.withUnsafeBytes { if $0.count > 0 { dst.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                #else
                for (i, v) in values.enumerated() { dst.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
                #endif
                at += 4 * values.count
            }
        }
        return out
    }

    /// Writes the file atomically (see `AtomicFile`); with `checksum` (or when the metadata already
    /// holds one, as in a file read and changed), the metadata carries the content checksum that
    /// reading verifies.
    public func write(path: String, checksum: Bool = false) throws {
        var file = self
        if checksum || metadata[Self.checksumKey] != nil { file.metadata[Self.checksumKey] = file.contentChecksum() }
        try AtomicFile.write(try file.encoded(), to: path)
    }

    // MARK: Checksum

    public static let checksumKey = "espalier.checksum"

    /// "crc32:XXXXXXXX" over the metadata (sorted, without the checksum itself) and every tensor
    /// (sorted by name: name, rank, dimensions, little-endian float32 bytes). It covers every
    /// value of the file, independently of the JSON's spelling.
    public func contentChecksum() -> String {
        var crc: uLong = crc32(0, nil, 0)
        func feed(_ bytes: UnsafeRawBufferPointer) {
            var p = bytes.baseAddress, left = bytes.count
            while left > 0, let q = p {
                let n = min(left, 1 << 30)
                crc = crc32(crc, q.assumingMemoryBound(to: Bytef.self), uInt(n))
                p = q + n; left -= n
            }
        }
        func feed(_ text: String) { Array(text.utf8 + [0]).withUnsafeBytes { feed($0) } }
        func feed(_ n: Int) { var v = Int64(n).littleEndian; withUnsafeBytes(of: &v) { feed($0) } }
        for key in Self.sortedNames(metadata.keys) where key != Self.checksumKey { feed(key); feed(metadata[key]!) }
        for name in names {
            let e = tensors[name]!
            feed(name); feed(e.shape.count); for d in e.shape { feed(d) }
            #if _endian(little)
            e.values.withUnsafeBytes { feed($0) }
            #else
            e.values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { feed($0) }
            #endif
        }
        return String(format: "crc32:%08x", UInt32(truncatingIfNeeded: crc))
    }

    /// Writes named tensors (and metadata) to `path` atomically.
    public static func write(_ named: [String: Tensor], metadata: [String: String] = [:], to path: String) throws {
        try SafeTensorsFile(named: named, metadata: metadata).write(path: path)
    }

    // MARK: Reading

    /// Reads and validates a safetensors file.
    public static func read(path: String) throws -> SafeTensorsFile {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            var isDir: ObjCBool = false
            if !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
                throw EspalierError.data(file: path, problem: "no such file; check the path (or write the checkpoint first)")
            }
            if isDir.boolValue {
                throw EspalierError.data(file: path, problem: "is a directory, not a safetensors file")
            }
            throw EspalierError.data(file: path, problem: "cannot be read (\(error.localizedDescription)); check its permissions")
        }
        return try decode(data, file: path)
    }

    /// Parses and validates safetensors bytes; `file` names the source in errors.
    public static func decode(_ data: Data, file: String) throws -> SafeTensorsFile {
        func bad(_ problem: String) -> EspalierError { .data(file: file, problem: problem) }
        let bytes = [UInt8](data)
        guard bytes.count >= 8 else {
            throw bad("file is \(bytes.count) bytes long, too short for a safetensors header (8-byte length + JSON); "
                      + "it is truncated or not a safetensors file")
        }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(maxHeaderBytes) else {
            throw bad("header length \(n) is larger than the \(maxHeaderBytes)-byte limit; this is not a safetensors file or it is corrupt")
        }
        let headerLength = Int(n)
        guard 8 + headerLength <= bytes.count else {
            throw bad("header length \(headerLength) runs past the end of the \(bytes.count)-byte file; the file is truncated")
        }
        guard headerLength >= 2 else {
            throw bad("header length \(headerLength) is too small for a JSON header; the file is corrupt")
        }
        let headerSlice = bytes[8..<(8 + headerLength)]
        guard headerSlice.first == UInt8(ascii: "{") else {
            throw bad("the header does not start with '{'; this is not a safetensors file or it is corrupt")
        }
        let top: [String: JSONValue]
        do {
            top = try JSONDecoder().decode([String: JSONValue].self, from: Data(headerSlice))
        } catch {
            throw bad("the header is not valid JSON (\(IOJSON.describe(error))); the file is corrupt")
        }

        var result = SafeTensorsFile(source: file)
        if let meta = top[metadataKey] {
            guard case .object(let fields) = meta else {
                throw bad("\(metadataKey) must be an object of strings, found \(meta.kind)")
            }
            for (k, v) in fields {
                guard case .string(let s) = v else {
                    throw bad("\(metadataKey) entry '\(k)' must be a string, found \(v.kind)")
                }
                result.metadata[k] = s
            }
        }

        let dataStart = 8 + headerLength
        let dataSize = bytes.count - dataStart
        var spans: [(begin: Int, end: Int, name: String)] = []
        for name in sortedNames(top.keys) where name != metadataKey {
            func badTensor(_ problem: String) -> EspalierError { .data(file: file, problem: "tensor '\(name)': \(problem)") }
            guard case .object(let info) = top[name]! else {
                throw badTensor("header entry must be an object with dtype, shape and data_offsets, found \(top[name]!.kind)")
            }
            guard let dtypeValue = info["dtype"] else { throw badTensor("no dtype in the header") }
            guard case .string(let dtype) = dtypeValue else { throw badTensor("dtype must be a string, found \(dtypeValue.kind)") }
            guard dtype == "F32" else {
                throw badTensor("dtype \(dtype) is not supported (only F32 is); convert the checkpoint to float32")
            }
            guard let shapeValue = info["shape"] else { throw badTensor("no shape in the header") }
            guard let shape = shapeValue.integers, shape.allSatisfy({ $0 >= 0 }) else {
                throw badTensor("shape must be an array of non-negative integers, found \(shapeValue.text)")
            }
            var count = 1
            for d in shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard !o, p <= Int.max / 8 else { throw badTensor("shape \(shape) is impossibly large; the file is corrupt") }
                count = p
            }
            guard let offsetsValue = info["data_offsets"] else { throw badTensor("no data_offsets in the header") }
            guard let offsets = offsetsValue.integers, offsets.count == 2 else {
                throw badTensor("data_offsets must be two integers [begin, end], found \(offsetsValue.text)")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, begin <= end else {
                throw badTensor("data_offsets [\(begin), \(end)] are not an increasing range; the file is corrupt")
            }
            guard end <= dataSize else {
                throw badTensor("data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes); the file is truncated")
            }
            guard end - begin == 4 * count else {
                throw badTensor("data_offsets [\(begin), \(end)] hold \(end - begin) bytes, but shape \(shape) of F32 needs \(4 * count)")
            }
            spans.append((begin, end, name))
            result.tensors[name] = Entry(shape: shape, values: [])
        }

        // The tensors must tile the data block exactly: no overlap, no hole, nothing after.
        spans.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var covered = 0
        var previous: String?
        for s in spans {
            if s.begin < covered {
                throw bad("tensor '\(s.name)': data_offsets [\(s.begin), \(s.end)] overlap tensor '\(previous!)' (which ends at \(covered)); "
                          + "the file is corrupt")
            }
            if s.begin > covered {
                throw bad("tensor '\(s.name)': data_offsets start at \(s.begin), leaving bytes \(covered)..<\(s.begin) of the data "
                          + "that belong to no tensor; the file is corrupt")
            }
            covered = s.end
            previous = s.name
        }
        if covered != dataSize {
            throw bad("\(dataSize - covered) trailing bytes after the last tensor (the header accounts for \(covered) of the "
                      + "\(dataSize) data bytes); the file is corrupt or was appended to")
        }

        for s in spans {
            let count = (s.end - s.begin) / 4
            let values = [Float](unsafeUninitializedCapacity: count) { buf, initialized in
                bytes.withUnsafeBytes { raw in
                    let src = raw.baseAddress!.advanced(by: dataStart + s.begin)
                    #if _endian(little)
                    if count > 0 { UnsafeMutableRawPointer(buf.baseAddress!).copyMemory(from: src, byteCount: 4 * count) }
                    #else
                    for i in 0..<count {
                        buf[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                    }
                    #endif
                }
                initialized = count
            }
            result.tensors[s.name]!.values = values
        }
        if let stored = result.metadata[checksumKey] {
            let actual = result.contentChecksum()
            guard stored == actual else {
                throw bad("the checksum does not match the content (stored \(stored), computed \(actual)): the file was edited or damaged "
                          + "after it was written; use an intact copy")
            }
        }
        return result
    }

    // MARK: Loading into tensors

    /// Copies stored values into existing tensors by name. Every name must be present with exactly
    /// the tensor's shape; all are checked before any is written, so a failure changes nothing.
    /// With `strict`, tensors in the file that are not asked for are an error too.
    /// Virtual (dry-run) tensors are checked but not written.
    public func load(into targets: [(String, Tensor)], strict: Bool = false) throws {
        var seen = Set<String>()
        for (name, t) in targets {
            guard let e = tensors[name] else {
                let near = names.filter { $0.hasSuffix((name as NSString).lastPathComponent) }.prefix(3)
                throw EspalierError.data(file: source, problem: "tensor '\(name)' is missing from the checkpoint (it holds \(tensors.count) "
                                         + "tensors\(near.isEmpty ? "" : ", e.g. \(near.map { "'\($0)'" }.joined(separator: ", "))")); "
                                         + "was it written by a different network or configuration?")
            }
            guard e.shape == t.shape else {
                throw EspalierError.data(file: source, problem: "tensor '\(name)' has shape \(e.shape) in the checkpoint but \(t.shape) "
                                         + "in the network; the checkpoint belongs to a different configuration (channels, cells, classes)")
            }
            guard seen.insert(name).inserted else {
                throw EspalierError.invalidArgument("tensor '\(name)' is asked for twice")
            }
        }
        if strict {
            let unused = names.filter { !seen.contains($0) }
            if !unused.isEmpty {
                throw EspalierError.data(file: source, problem: "\(unused.count) tensors in the checkpoint are not used by the network "
                                         + "(\(unused.prefix(5).map { "'\($0)'" }.joined(separator: ", "))\(unused.count > 5 ? ", …" : "")); "
                                         + "the checkpoint belongs to a different configuration")
            }
        }
        for (name, t) in targets where !t.isVirtual {
            let values = tensors[name]!.values
            values.withUnsafeBufferPointer { if $0.count > 0 { t.ptr.update(from: $0.baseAddress!, count: $0.count) } }
        }
    }

    /// Reads `path` and loads it into `targets` (see `load(into:strict:)`); returns the file's metadata.
    @discardableResult
    public static func load(path: String, into targets: [(String, Tensor)], strict: Bool = false) throws -> [String: String] {
        let f = try read(path: path)
        try f.load(into: targets, strict: strict)
        return f.metadata
    }

    // MARK: Helpers

    /// Names in a locale-independent order (UTF-8 bytes), the order of the file.
    static func sortedNames<S: Sequence>(_ names: S) -> [String] where S.Element == String {
        names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }
}

// MARK: - Minimal JSON value (for validating headers with precise messages)

fileprivate enum JSONValue: Decodable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null; return }
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let d = try? c.decode(Double.self) { self = .number(d); return }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        if let a = try? c.decode([JSONValue].self) { self = .array(a); return }
        self = .object(try c.decode([String: JSONValue].self))
    }

    var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// The elements as exact integers, or nil if this is not an array of integers.
    var integers: [Int]? {
        guard case .array(let items) = self else { return nil }
        var out: [Int] = []
        for item in items {
            guard case .number(let d) = item, d.rounded() == d, abs(d) < 9.0e15, let i = Int(exactly: d) else { return nil }
            out.append(i)
        }
        return out
    }

    /// Short JSON-ish text for messages.
    var text: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let d): return d.rounded() == d && abs(d) < 1e15 ? String(Int(d)) : String(d)
        case .string(let s): return IOJSON.quoted(s)
        case .array(let a): return "[" + a.map(\.text).joined(separator: ",") + "]"
        case .object(let o): return "{" + o.keys.sorted().map { IOJSON.quoted($0) + ":" + o[$0]!.text }.joined(separator: ",") + "}"
        }
    }
}

/// JSON text helpers shared by the IO files and the search's genotypes (EspalierSearch).
public enum IOJSON {
    /// A JSON string literal for `s` (quotes, backslashes and control characters escaped; other text as UTF-8).
    public static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 || u.value == 0x7F {
                    out += "\\u00" + (u.value < 0x10 ? "0" : "") + String(u.value, radix: 16)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    /// A one-line account of a JSON decoding error: where and what.
    public static func describe(_ error: Error) -> String {
        guard let e = error as? DecodingError else { return "\(error)" }
        func path(_ p: [CodingKey]) -> String {
            p.isEmpty ? "top level" : p.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        }
        switch e {
        case .dataCorrupted(let c):
            let underlying = (c.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String
            return "\(underlying ?? c.debugDescription) at \(path(c.codingPath))"
        case .keyNotFound(let key, let c):
            return "missing key \"\(key.stringValue)\" at \(path(c.codingPath))"
        case .typeMismatch(let type, let c):
            return "expected \(type) at \(path(c.codingPath)): \(c.debugDescription)"
        case .valueNotFound(let type, let c):
            return "expected \(type) at \(path(c.codingPath)), found null"
        @unknown default:
            return "\(e)"
        }
    }
}
