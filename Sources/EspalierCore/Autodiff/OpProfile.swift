// Wall-clock time by op, forward and backward, for `espalier bench --profile`. Perf's samples
// say which kernel a core was in; this says how long each op took on the clock, both cores
// together, so that a kernel that runs slowly only in some processes (or only inside the step)
// shows up as the op it belongs to, in seconds per step.
// Forward: an op's time is the clock from the previous op's `record` (or the start of the pass)
// to its own: the op's kernels, and the bookkeeping that led to it (a plugin op's calls into the
// host, the mixed edge's glue). A pass starts at `beginForward`; after a backward pass nothing is
// counted until the next one starts, so time between passes (the optimizer, the loss value read
// back) is in no op. Backward: the clock around the op's backward closure.
// Ops are named by the Graph method that records them (`#function` up to its parameters), so the
// host's service names appear, never a plugin's own.

import Dispatch

public final class OpProfile {
    public struct Entry: Equatable, Sendable {
        public var calls = 0
        public var forwardNanoseconds: UInt64 = 0
        public var backwardNanoseconds: UInt64 = 0
        public var backwardCalls = 0
    }

    /// By op name.
    public private(set) var entries: [String: Entry] = [:]
    /// When the op being run began (the previous op's record, or the pass's start); nil between passes.
    private var mark: UInt64?

    public init() {}

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// The op name `record` is called from: "avgPool2d(_:kernel:…)" → "avgPool2d".
    static func name(_ function: StaticString) -> String {
        let s = function.description
        return s.firstIndex(of: "(").map { String(s[..<$0]) } ?? s
    }

    /// A forward pass starts: the next op's time counts from now.
    public func beginForward() { mark = Self.now() }

    /// A pass ended (backward ran, or the tape was dropped): nothing is counted until `beginForward`.
    public func endPass() { mark = nil }

    /// `op` was recorded: its forward time is the clock since the mark. Returns its name.
    func recorded(_ op: StaticString) -> String {
        let t = Self.now(), key = Self.name(op)
        var e = entries[key] ?? Entry()
        e.calls += 1
        if let m = mark { e.forwardNanoseconds += t - m }
        entries[key] = e
        if mark != nil { mark = t }
        return key
    }

    /// `op`'s backward closure ran from `start` to now.
    func backwardRan(_ key: String, since start: UInt64) {
        let t = Self.now()
        var e = entries[key] ?? Entry()
        e.backwardNanoseconds += t - start
        e.backwardCalls += 1
        entries[key] = e
    }

    public func reset() { entries = [:]; mark = nil }
}
