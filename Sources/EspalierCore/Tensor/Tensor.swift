// Tensors: float32, NCHW, contiguous. `Storage` is the one owner of a buffer and of its entry
// in the memory accountant; `Tensor` is a shape over a storage (reshape shares the storage).
// In a dry-run accountant a storage has no bytes behind it (`data == nil`): shapes flow,
// kernels are skipped, and the accountant sees exactly the allocations of a real run.
// Not here: strided views, other dtypes, devices.

import Foundation

/// One contiguous float32 buffer, counted by its accountant from init to deinit.
public final class Storage {
    public let count: Int
    /// nil in dry-run mode.
    public let data: UnsafeMutablePointer<Float>?
    public let accountant: MemoryAccountant
    public let category: MemoryCategory
    public let owner: Int32

    public var byteCount: Int { count * MemoryLayout<Float>.stride }

    /// Allocates `count` floats (uninitialised) under the accountant's current owner.
    public init(count: Int, category: MemoryCategory, accountant: MemoryAccountant, owner: Int32? = nil) throws {
        precondition(count >= 0, "negative element count")
        let owner = owner ?? accountant.currentOwner
        try accountant.reserve(bytes: count * MemoryLayout<Float>.stride, category: category, owner: owner)
        self.count = count
        self.accountant = accountant
        self.category = category
        self.owner = owner
        if accountant.isDryRun {
            data = nil
        } else {
            let bytes = count * MemoryLayout<Float>.stride
            guard let raw = accountant.pool.take(bytes: bytes, live: accountant.currentTotal, cap: accountant.poolCap) else {
                accountant.release(bytes: bytes, category: category, owner: owner)
                throw EspalierError.outOfMemory(bytes: bytes, owner: accountant.ownerPath(owner))
            }
            data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        }
    }

    deinit {
        if let data { accountant.pool.give(UnsafeMutableRawPointer(data), bytes: byteCount) }
        accountant.release(bytes: byteCount, category: category, owner: owner)
    }
}

/// A shape over a storage. Value type; copying a `Tensor` shares the storage.
public struct Tensor {
    public let shape: [Int]
    public let storage: Storage

    public var count: Int { storage.count }
    public var rank: Int { shape.count }
    public var accountant: MemoryAccountant { storage.accountant }
    public var isVirtual: Bool { storage.data == nil }
    /// The buffer; only valid when not virtual (kernels are skipped in dry-run mode).
    public var ptr: UnsafeMutablePointer<Float> { storage.data! }

    /// A new uninitialised tensor.
    public init(shape: [Int], category: MemoryCategory, accountant: MemoryAccountant, owner: Int32? = nil) throws {
        let n = shape.reduce(1, *)
        self.shape = shape
        self.storage = try Storage(count: n, category: category, accountant: accountant, owner: owner)
    }

    /// A tensor over an existing storage (used by reshape).
    public init(shape: [Int], storage: Storage) {
        precondition(shape.reduce(1, *) == storage.count, "shape \(shape) does not match storage of \(storage.count)")
        self.shape = shape
        self.storage = storage
    }

    public static func zeros(_ shape: [Int], category: MemoryCategory, accountant: MemoryAccountant, owner: Int32? = nil) throws -> Tensor {
        let t = try Tensor(shape: shape, category: category, accountant: accountant, owner: owner)
        t.fill(0)
        return t
    }

    public static func filled(_ shape: [Int], value: Float, category: MemoryCategory, accountant: MemoryAccountant) throws -> Tensor {
        let t = try Tensor(shape: shape, category: category, accountant: accountant)
        t.fill(value)
        return t
    }

    /// A tensor holding `values` (shape must match).
    public static func from(_ values: [Float], shape: [Int], category: MemoryCategory = .data, accountant: MemoryAccountant) throws -> Tensor {
        guard values.count == shape.reduce(1, *) else {
            throw EspalierError.shapeMismatch("\(values.count) values for shape \(shape)")
        }
        let t = try Tensor(shape: shape, category: category, accountant: accountant)
        if !t.isVirtual { values.withUnsafeBufferPointer { t.ptr.update(from: $0.baseAddress!, count: values.count) } }
        return t
    }

    public func reshaped(_ newShape: [Int]) -> Tensor { Tensor(shape: newShape, storage: storage) }

    public func fill(_ v: Float) {
        guard let p = storage.data else { return }
        p.update(repeating: v, count: count)
    }

    /// Copies the values out (empty in dry-run).
    public var array: [Float] {
        guard let p = storage.data else { return [] }
        return Array(UnsafeBufferPointer(start: p, count: count))
    }

    public subscript(_ i: Int) -> Float {
        get { storage.data![i] }
        nonmutating set { storage.data![i] = newValue }
    }

    /// A deep copy in a new storage.
    public func copy(category: MemoryCategory? = nil) throws -> Tensor {
        let t = try Tensor(shape: shape, category: category ?? storage.category, accountant: accountant)
        if let src = storage.data { t.ptr.update(from: src, count: count) }
        return t
    }

    // NCHW accessors (rank 4).
    public var n: Int { shape[0] }
    public var c: Int { shape[1] }
    public var h: Int { shape[2] }
    public var w: Int { shape[3] }
}

/// Errors of the engine that a user or plugin can act on.
public enum EspalierError: Error, CustomStringConvertible, Equatable {
    case shapeMismatch(String)
    case invalidArgument(String)
    case outOfMemory(bytes: Int, owner: String)
    case data(file: String, problem: String)
    case config(String)

    public var description: String {
        switch self {
        case .shapeMismatch(let s): return "shape mismatch: \(s)"
        case .invalidArgument(let s): return "invalid argument: \(s)"
        case .outOfMemory(let b, let o): return "the system refused \(formatBytes(b)) for \(o.isEmpty ? "<root>" : o)"
        case .data(let f, let p): return "\(f): \(p)"
        case .config(let s): return "configuration: \(s)"
        }
    }
}
