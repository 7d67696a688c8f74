// The ranks of a data-parallel run and what they exchange. One process is `SingleProcess` (rank
// 0 of 1; every exchange is the identity); under mpirun it is `MPICommunicator` (MPICommunicator
// .swift, Open MPI through the dlopen'ed communication layer); a dry run that predicts one rank's
// memory uses `SimulatedRanks` (the rank and the count, nothing exchanged). Shares of a batch
// are contiguous and as even as integers allow: rank r of N holds samples [r·B/N, (r+1)·B/N).
// Every call is collective: every rank makes the same calls in the same order, from the thread
// that started the run.

import Foundation

public protocol Communicator: AnyObject {
    /// This process's rank, 0..<size.
    var rank: Int { get }
    /// The number of ranks.
    var size: Int { get }
    /// In-place sum over every rank.
    func sum(_ values: UnsafeMutableBufferPointer<Float>) throws
    func sum(_ values: UnsafeMutableBufferPointer<Double>) throws
    /// Rank `root`'s bytes, on every rank (the others' `bytes` are replaced, any length).
    func broadcast(_ bytes: inout [UInt8], root: Int) throws
    /// Ends every rank of the job (a rank that cannot go on while the others wait in an exchange).
    func abort(code: Int32) -> Never
    /// What the ranks run on, in words ("one process", "Open MPI v4.1.4 …").
    var transport: String { get }
}

public extension Communicator {
    var isDistributed: Bool { size > 1 }
    var isRoot: Bool { rank == 0 }

    /// This rank's samples of a batch of `count`: [rank·count/size, (rank+1)·count/size).
    func share(of count: Int) -> Range<Int> { Shards.range(part: rank, of: size, count: count) }

    /// Sums of doubles given as an array (collective).
    func sum(_ values: [Double]) throws -> [Double] {
        var v = values
        try v.withUnsafeMutableBufferPointer { try sum($0) }
        return v
    }

    /// True on every rank when it is true on any (collective).
    func any(_ flag: Bool) throws -> Bool { try sum([flag ? 1 : 0])[0] > 0 }

    /// Rank `root`'s value of a Codable, on every rank (collective).
    func broadcast<T: Codable>(_ value: T?, root: Int = 0) throws -> T {
        var bytes = rank == root ? [UInt8](try JSONEncoder().encode(value!)) : []
        try broadcast(&bytes, root: root)
        return try JSONDecoder().decode(T.self, from: Data(bytes))
    }
}

/// Contiguous shares of `count` items over `parts` parts.
public enum Shards {
    public static func range(part: Int, of parts: Int, count: Int) -> Range<Int> {
        precondition(parts >= 1 && part >= 0 && part < parts, "part \(part) of \(parts)")
        return (part * count / parts) ..< ((part + 1) * count / parts)
    }
}

/// One process: rank 0 of 1.
public final class SingleProcess: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func sum(_ values: UnsafeMutableBufferPointer<Float>) throws {}
    public func sum(_ values: UnsafeMutableBufferPointer<Double>) throws {}
    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {}
    public func abort(code: Int32) -> Never { exit(code) }
    public var transport: String { "one process" }
}

/// Rank `rank` of `size` in a dry run: shares and buffers as that rank would have them; every
/// exchange leaves the values as they are (a dry run computes none).
public final class SimulatedRanks: Communicator {
    public let rank: Int, size: Int
    public init(rank: Int, size: Int) {
        precondition(size >= 1 && rank >= 0 && rank < size)
        self.rank = rank
        self.size = size
    }
    public func sum(_ values: UnsafeMutableBufferPointer<Float>) throws {}
    public func sum(_ values: UnsafeMutableBufferPointer<Double>) throws {}
    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {}
    public func abort(code: Int32) -> Never { exit(code) }
    public var transport: String { "rank \(rank) of \(size), simulated (dry run)" }
}
