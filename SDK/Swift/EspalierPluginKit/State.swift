// A component's own state in the search checkpoint (ABI 1.3): `StatefulComponent` (saveState /
// loadState; a strategy or regularizer that conforms gets the vtable's save_state and load_state,
// others leave them NULL = stateless), `StateWriter` / `StateReader` (a small little-endian byte
// format with checked reads, no Foundation), and the C thunks both kinds share.

/// A strategy or regularizer with mutable state that later calls depend on and that the host does
/// not keep (a best-so-far, a stage's progress, momentum buffers, counters). The host saves the
/// blob in every checkpoint and hands it back on resume, after `init` and after it has restored its
/// own state (cells, op states, values, weights).
public protocol StatefulComponent: AnyObject {
    /// The state as bytes; start with a format byte of your own. Empty = nothing to save now.
    func saveState() throws -> [UInt8]
    /// Restores bytes `saveState` wrote. They come from a file: check them and throw
    /// `PluginError.invalidArgument` (what is wrong) for a blob you cannot read.
    func loadState(_ bytes: [UInt8]) throws
}

/// Builds a state blob: fixed-width little-endian numbers, counted arrays and strings.
public struct StateWriter {
    public private(set) var bytes: [UInt8] = []

    /// Starts a blob with its format byte.
    public init(format: UInt8) { bytes = [format] }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func int(_ v: Int) { u64(UInt64(bitPattern: Int64(v))) }
    public mutating func double(_ v: Double) { u64(v.bitPattern) }
    public mutating func ints(_ v: [Int]) { int(v.count); for x in v { int(x) } }
    public mutating func doubles(_ v: [Double]) { int(v.count); for x in v { double(x) } }
    public mutating func floats(_ v: UnsafeBufferPointer<Float>) {
        int(v.count)
        for x in v { let b = x.bitPattern; for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: b >> (8 * UInt32(i)))) } }
    }
    public mutating func string(_ v: String) { let u = Array(v.utf8); int(u.count); bytes += u }
}

/// Reads a blob `StateWriter` built; every read checks the length and throws
/// `PluginError.invalidArgument` naming the component and what was cut short.
public struct StateReader {
    private let bytes: [UInt8]
    private var offset = 0
    private let owner: String

    /// Checks the format byte: `owner` names the component in errors.
    public init(_ bytes: [UInt8], format: UInt8, owner: String) throws {
        self.bytes = bytes; self.owner = owner
        guard let first = bytes.first else { throw PluginError.invalidArgument("\(owner): the saved state is empty") }
        guard first == format else {
            throw PluginError.invalidArgument("\(owner): saved state has format \(first), this version reads format \(format)")
        }
        offset = 1
    }

    private mutating func take(_ n: Int, _ what: String) throws -> ArraySlice<UInt8> {
        guard n >= 0, bytes.count - offset >= n else {
            throw PluginError.invalidArgument("\(owner): the saved state is cut short (\(bytes.count) bytes; \(what) needs \(n) at offset \(offset))")
        }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    public mutating func u8(_ what: String = "a byte") throws -> UInt8 { try take(1, what).first! }
    public mutating func bool(_ what: String = "a flag") throws -> Bool {
        let b = try u8(what)
        guard b <= 1 else { throw PluginError.invalidArgument("\(owner): saved state: \(what) is \(b), not 0 or 1") }
        return b == 1
    }
    public mutating func u64(_ what: String = "a number") throws -> UInt64 {
        try take(8, what).enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }
    public mutating func int(_ what: String = "a number") throws -> Int { Int(Int64(bitPattern: try u64(what))) }
    public mutating func double(_ what: String = "a number") throws -> Double { Double(bitPattern: try u64(what)) }
    /// A count, checked against what is left (each item at least `itemBytes`).
    public mutating func count(_ what: String, itemBytes: Int) throws -> Int {
        let n = try int(what)
        guard n >= 0, n <= (bytes.count - offset) / max(itemBytes, 1) else {
            throw PluginError.invalidArgument("\(owner): saved state: \(what) counts \(n) items, more than the \(bytes.count - offset) bytes left hold")
        }
        return n
    }
    public mutating func ints(_ what: String) throws -> [Int] {
        try (0..<count(what, itemBytes: 8)).map { _ in try int(what) }
    }
    public mutating func doubles(_ what: String) throws -> [Double] {
        try (0..<count(what, itemBytes: 8)).map { _ in try double(what) }
    }
    public mutating func floats(_ what: String) throws -> [Float] {
        let n = try count(what, itemBytes: 4)
        let raw = try take(4 * n, what)
        return (0..<n).map { k in
            let base = raw.startIndex + 4 * k
            return Float(bitPattern: (0..<4).reduce(UInt32(0)) { $0 | UInt32(raw[base + $1]) << (8 * UInt32($1)) })
        }
    }
    public mutating func string(_ what: String) throws -> String {
        String(decoding: try take(count(what, itemBytes: 1), what), as: UTF8.self)
    }
    /// Throws unless every byte was read (a blob of another layout with the same format byte).
    public func finish() throws {
        guard offset == bytes.count else {
            throw PluginError.invalidArgument("\(owner): the saved state has \(bytes.count - offset) unexpected trailing bytes")
        }
    }
}

/// save_state and load_state of every Swift strategy and regularizer that is a `StatefulComponent`.
enum StateThunks {
    static func save<Object>(_ box: Instance<Object>?, _ buffer: UnsafeMutablePointer<UInt8>?, _ capacity: UInt64,
                             _ length: UnsafeMutablePointer<UInt64>?) -> es_status {
        guard let box else { return nullInstanceStatus }
        return box.call("save_state") {
            guard let s = box.object as? any StatefulComponent else { throw PluginError.unsupported("this component keeps no state") }
            guard let length else { throw PluginError.invalidArgument("save_state: length is NULL") }
            let bytes = try s.saveState()
            length.pointee = UInt64(bytes.count)
            guard capacity >= UInt64(bytes.count) else {
                throw PluginError.invalidArgument("save_state: the buffer holds \(capacity) bytes, the state needs \(bytes.count)")
            }
            guard !bytes.isEmpty else { return }
            guard let buffer else { throw PluginError.invalidArgument("save_state: buffer is NULL") }
            for (i, b) in bytes.enumerated() { buffer[i] = b }
        }
    }

    static func load<Object>(_ box: Instance<Object>?, _ bytes: UnsafePointer<UInt8>?, _ length: UInt64) -> es_status {
        guard let box else { return nullInstanceStatus }
        return box.call("load_state") {
            guard let s = box.object as? any StatefulComponent else { throw PluginError.unsupported("this component keeps no state") }
            guard length == 0 || bytes != nil else { throw PluginError.invalidArgument("load_state: \(length) bytes but the pointer is NULL") }
            try s.loadState(length == 0 ? [] : Array(UnsafeBufferPointer(start: bytes, count: Int(length))))
        }
    }
}
