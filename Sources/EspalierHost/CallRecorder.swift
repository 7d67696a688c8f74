// The "which plugin call is running" page of a supervised search: a 4 KiB file in /dev/shm that
// the worker process maps and writes before and after every plugin call (HostContext.check), and
// that its supervising parent reads after the worker died, to say which plugin, which call,
// which owner (cell/edge/op) and which epoch and step it died in, or hung in.
// Layout (little-endian, fixed): magic u32 | in_call u32 | epoch i64 | step i64 | seq u64 |
// what[224] (NUL-terminated UTF-8, "component: function") | owner[256] (owner path).
// Writes are plain stores: the reader looks only after the writer has died or been stopped.

import Foundation

#if canImport(Glibc)
import Glibc
#endif

public final class CallRecorder: @unchecked Sendable {
    /// The worker's recorder, when it runs supervised (nil otherwise: nothing is recorded).
    nonisolated(unsafe) public static var active: CallRecorder?

    static let size = 4096, magic: UInt32 = 0x4553_4352   // "ESCR"
    static let whatOffset = 32, whatBytes = 224, ownerOffset = 256, ownerBytes = 256

    public let path: String
    private let base: UnsafeMutableRawPointer

    private init(path: String, base: UnsafeMutableRawPointer) { self.path = path; self.base = base }

    /// A new page for a worker about to start (the supervisor's side).
    public static func create() throws -> CallRecorder {
        let dir = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let path = (dir as NSString).appendingPathComponent("espalier-call-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let r = try map(path, create: true)
        r.base.storeBytes(of: magic, as: UInt32.self)
        return r
    }

    /// The page a supervisor made (the worker's side); nil if it cannot be mapped.
    public static func attach(path: String) -> CallRecorder? { try? map(path, create: false) }

    private static func map(_ path: String, create: Bool) throws -> CallRecorder {
        let fd = open(path, create ? (O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC) : (O_RDWR | O_CLOEXEC), 0o600)
        guard fd >= 0 else { throw EspalierCallRecorderError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        if create, ftruncate(fd, off_t(size)) != 0 { throw EspalierCallRecorderError("cannot size \(path): \(String(cString: strerror(errno)))") }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw EspalierCallRecorderError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        return CallRecorder(path: path, base: p)
    }

    /// Before a plugin call.
    @inline(__always)
    public func enter(_ what: String, owner: String, epoch: Int, step: Int) {
        store(what, at: Self.whatOffset, capacity: Self.whatBytes)
        store(owner, at: Self.ownerOffset, capacity: Self.ownerBytes)
        base.storeBytes(of: Int64(epoch), toByteOffset: 8, as: Int64.self)
        base.storeBytes(of: Int64(step), toByteOffset: 16, as: Int64.self)
        base.storeBytes(of: base.load(fromByteOffset: 24, as: UInt64.self) &+ 1, toByteOffset: 24, as: UInt64.self)
        base.storeBytes(of: 1, toByteOffset: 4, as: UInt32.self)
    }

    /// After it returned.
    @inline(__always)
    public func leave() { base.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self) }

    private func store(_ s: String, at offset: Int, capacity: Int) {
        var s = s
        s.withUTF8 { u in
            let n = min(u.count, capacity - 1)
            if n > 0 { (base + offset).copyMemory(from: u.baseAddress!, byteCount: n) }
            (base + offset + n).storeBytes(of: 0, as: UInt8.self)
        }
    }

    /// What the page says: the last call entered, and whether it was still running.
    public struct Record: Sendable, Equatable {
        public var inCall: Bool, what: String, owner: String, epoch: Int, step: Int, calls: UInt64
    }

    public func read() -> Record? {
        guard base.load(as: UInt32.self) == Self.magic else { return nil }
        func string(_ offset: Int, _ capacity: Int) -> String {
            let p = (base + offset).assumingMemoryBound(to: UInt8.self)
            let n = (0..<capacity).first { p[$0] == 0 } ?? capacity
            return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
        }
        return Record(inCall: base.load(fromByteOffset: 4, as: UInt32.self) != 0, what: string(Self.whatOffset, Self.whatBytes),
                      owner: string(Self.ownerOffset, Self.ownerBytes), epoch: Int(base.load(fromByteOffset: 8, as: Int64.self)),
                      step: Int(base.load(fromByteOffset: 16, as: Int64.self)), calls: base.load(fromByteOffset: 24, as: UInt64.self))
    }

    /// Unmaps the page and removes its file (the supervisor, at the end).
    public func remove() {
        munmap(base, Self.size)
        unlink(path)
    }
}

public struct EspalierCallRecorderError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
