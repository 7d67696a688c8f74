// The memory accountant: every byte the engine allocates is counted here, tagged with a
// category and an owner path (`cell3/edge7/sep_conv_5x5`). It reports current and peak bytes
// by category and by owner, enforces a budget, and has a shape-only dry-run mode in which the
// same code path runs without computing, so the peak of a step is known before it is paid for.
// It does not allocate itself: `Storage` asks it for permission and reports back, and takes
// its buffer from the accountant's `BufferPool`.

import Foundation

/// What a block of memory is for. Raw values are stable (they cross the plugin ABI).
public enum MemoryCategory: Int32, CaseIterable, Sendable, Codable {
    case parameters = 0
    /// Gradients of parameters (persistent, one per parameter).
    case gradients = 1
    case optimizerState = 2
    /// Forward outputs, alive while something (backward, or the caller) still needs them.
    case activations = 3
    /// Gradients of intermediate values during backward; freed as soon as they are used.
    case activationGradients = 4
    /// Scratch space of a kernel (im2col columns, per-thread partial sums).
    case workspace = 5
    /// Input batches and datasets.
    case data = 6

    public var name: String {
        switch self {
        case .parameters: return "parameters"
        case .gradients: return "gradients"
        case .optimizerState: return "optimizer_state"
        case .activations: return "activations"
        case .activationGradients: return "activation_gradients"
        case .workspace: return "workspace"
        case .data: return "data"
        }
    }
}

/// An allocation would take the accountant over its budget. Nothing was allocated.
public struct MemoryBudgetExceeded: Error, CustomStringConvertible, Equatable {
    public let owner: String
    public let category: MemoryCategory
    public let requestedBytes: Int
    public let currentBytes: Int
    public let budgetBytes: Int

    public var description: String {
        "memory budget exceeded: \(owner.isEmpty ? "<root>" : owner) asked for \(formatBytes(requestedBytes)) of \(category.name) "
            + "while \(formatBytes(currentBytes)) are in use; the budget is \(formatBytes(budgetBytes)) "
            + "(short by \(formatBytes(currentBytes + requestedBytes - budgetBytes))). "
            + "Raise --memory-budget, or shrink the batch, channels or cells."
    }
}

/// The accountant's books do not balance (a bug in the engine, never a user's mistake).
public struct AccountantInvariantViolation: Error, CustomStringConvertible {
    public let description: String
}

/// Byte counts per category, indexed by `MemoryCategory.rawValue`.
public struct CategoryBytes: Equatable, Codable, Sendable {
    public var bytes: [Int] = Array(repeating: 0, count: MemoryCategory.allCases.count)
    public init() {}
    public subscript(_ c: MemoryCategory) -> Int {
        get { bytes[Int(c.rawValue)] }
        set { bytes[Int(c.rawValue)] = newValue }
    }
    public var total: Int { bytes.reduce(0, +) }
}

/// One row of the per-owner table.
public struct OwnerMemory: Sendable {
    public let owner: String
    public var current = CategoryBytes()
    /// This owner's own high-water mark (may be reached at a different moment than the global peak).
    public var peak = 0
    /// What this owner held at the moment of the global peak.
    public var atGlobalPeak = CategoryBytes()
}

public final class MemoryAccountant {
    public enum Mode: Sendable { case real, dryRun }

    public let mode: Mode
    /// Bytes that may be in use at once; nil means unlimited.
    public var budget: Int?
    /// A prediction's budget: the one the predicted run will have (`--memory-budget`), reported to
    /// plugins that plan inside it (memory_report) but never enforced, since a prediction measures
    /// what is needed. nil outside predictions.
    public var plannedBudget: Int?
    public var isDryRun: Bool { mode == .dryRun }

    public private(set) var current = CategoryBytes()
    public private(set) var currentTotal = 0
    public private(set) var peakTotal = 0
    /// The category breakdown at the moment `peakTotal` was reached.
    public private(set) var peakByCategory = CategoryBytes()
    /// Number of allocations ever made (a cheap check that two runs took the same path).
    public private(set) var allocationCount = 0
    /// The most ever in use at once (not reset by `resetPeak`): the buffer pool's cap.
    public private(set) var lifetimePeak = 0
    /// What in use plus the pool's idle bytes may reach: the lifetime peak plus 1/16, so that a
    /// few idle buffers of a size not needed at the peak are not unmapped and mapped again every
    /// step (darts small: 236 → ~80 new mappings a step); never above the budget.
    var poolCap: Int {
        let cap = lifetimePeak + lifetimePeak / 16
        guard let budget else { return cap }
        return max(lifetimePeak, min(cap, budget))
    }
    /// Where real storages get and return their buffers (see BufferPool.swift).
    lazy var pool = BufferPool()
    /// Bytes of freed buffers the pool keeps for reuse (not in use, not counted above).
    public var pooledBytes: Int { mode == .real ? pool.pooledBytes : 0 }
    /// Bytes of buffers lent at a larger size than their tensors (the pool's best fits), not counted as in use.
    public var pooledSlackBytes: Int { mode == .real ? pool.slackBytes : 0 }
    /// The pool's counters: bucket hits, new mappings, unmapped idle buffers.
    public var poolCounters: (hits: Int, maps: Int, unmaps: Int) { mode == .real ? (pool.hits, pool.maps, pool.unmaps) : (0, 0, 0) }
    /// Gives the pool's idle buffers back to the system.
    public func releaseIdleBuffers() { if mode == .real { pool.evict(down: 0) } }

    // Owners are interned: an allocation carries an index, not a string.
    private var ownerNames: [String] = [""]
    private var ownerIndex: [String: Int32] = ["": 0]
    private var ownerCurrent: [CategoryBytes] = [CategoryBytes()]
    private var ownerCurrentTotal: [Int] = [0]
    private var ownerPeak: [Int] = [0]
    private var ownerAtPeak: [CategoryBytes] = [CategoryBytes()]
    private var peakSnapshotStale = false
    private var scope: [Int32] = [0]

    public init(mode: Mode = .real, budget: Int? = nil) {
        self.mode = mode
        self.budget = budget
    }

    // MARK: Owner paths

    /// The owner that allocations are tagged with right now.
    public var currentOwner: Int32 { scope[scope.count - 1] }
    public var currentOwnerPath: String { ownerNames[Int(currentOwner)] }

    /// Interns an owner path and returns its id.
    public func owner(_ path: String) -> Int32 {
        if let id = ownerIndex[path] { return id }
        let id = Int32(ownerNames.count)
        ownerNames.append(path)
        ownerIndex[path] = id
        ownerCurrent.append(CategoryBytes())
        ownerCurrentTotal.append(0)
        ownerPeak.append(0)
        ownerAtPeak.append(CategoryBytes())
        return id
    }

    public func ownerPath(_ id: Int32) -> String { ownerNames[Int(id)] }

    /// Runs `body` with allocations tagged `<current>/<name>`.
    @discardableResult
    public func withOwner<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        let parent = currentOwnerPath
        pushOwner(owner(parent.isEmpty ? name : parent + "/" + name))
        defer { popOwner() }
        return try body()
    }

    /// Runs `body` with allocations tagged with an absolute owner id.
    @discardableResult
    public func withOwnerID<T>(_ id: Int32, _ body: () throws -> T) rethrows -> T {
        pushOwner(id)
        defer { popOwner() }
        return try body()
    }

    /// An id from another accountant is not ours: its allocations go to the root owner instead
    /// of reading outside the owner table.
    public func pushOwner(_ id: Int32) { scope.append(id >= 0 && Int(id) < ownerNames.count ? id : 0) }
    public func popOwner() { if scope.count > 1 { scope.removeLast() } }

    // MARK: Allocation bookkeeping (called by Storage)

    /// Records an allocation of `bytes`, or throws `MemoryBudgetExceeded` and records nothing.
    func reserve(bytes: Int, category: MemoryCategory, owner requested: Int32) throws {
        let owner = requested >= 0 && Int(requested) < ownerNames.count ? requested : 0
        if let budget, currentTotal + bytes > budget {
            throw MemoryBudgetExceeded(owner: ownerNames[Int(owner)], category: category,
                                       requestedBytes: bytes, currentBytes: currentTotal, budgetBytes: budget)
        }
        allocationCount += 1
        let o = Int(owner), c = Int(category.rawValue)
        current.bytes[c] += bytes
        currentTotal += bytes
        ownerCurrent[o].bytes[c] += bytes
        ownerCurrentTotal[o] += bytes
        if ownerCurrentTotal[o] > ownerPeak[o] { ownerPeak[o] = ownerCurrentTotal[o] }
        if currentTotal > lifetimePeak { lifetimePeak = currentTotal }
        if currentTotal > peakTotal {
            peakTotal = currentTotal
            peakByCategory = current
            peakSnapshotStale = true
        }
    }

    func release(bytes: Int, category: MemoryCategory, owner requested: Int32) {
        let owner = requested >= 0 && Int(requested) < ownerNames.count ? requested : 0
        // The per-owner picture at the peak is taken lazily, just before the peak is left.
        if peakSnapshotStale { snapshotOwnersAtPeak() }
        let o = Int(owner), c = Int(category.rawValue)
        current.bytes[c] -= bytes
        currentTotal -= bytes
        ownerCurrent[o].bytes[c] -= bytes
        ownerCurrentTotal[o] -= bytes
    }

    private func snapshotOwnersAtPeak() {
        for i in 0..<ownerCurrent.count { ownerAtPeak[i] = ownerCurrent[i] }
        peakSnapshotStale = false
    }

    /// Starts a new peak measurement from what is in use now (e.g. at the start of a step).
    public func resetPeak() {
        peakTotal = currentTotal
        peakByCategory = current
        for i in 0..<ownerPeak.count { ownerPeak[i] = ownerCurrentTotal[i] }
        peakSnapshotStale = true
    }

    // MARK: Invariants

    /// What is wrong with the books, or nil when they balance: per category, the owners' bytes
    /// sum to `current`; each owner's total is the sum of its categories; `currentTotal` is
    /// `current.total`; nothing is negative; the peaks are at least what is in use now. Tests call
    /// it after runs (a release that names the wrong owner or category shows up here).
    public func invariantViolation() -> String? {
        var problems: [String] = []
        var sums = CategoryBytes()
        for (i, row) in ownerCurrent.enumerated() {
            for c in 0..<sums.bytes.count {
                sums.bytes[c] += row.bytes[c]
                if row.bytes[c] < 0 { problems.append("owner '\(ownerNames[i])' holds \(row.bytes[c]) B of \(MemoryCategory.allCases[c].name)") }
            }
            if row.total != ownerCurrentTotal[i] {
                problems.append("owner '\(ownerNames[i])': categories sum to \(row.total) B but its total is \(ownerCurrentTotal[i]) B")
            }
        }
        for c in MemoryCategory.allCases where sums[c] != current[c] {
            problems.append("\(c.name): owners hold \(sums[c]) B but the category holds \(current[c]) B")
        }
        if current.total != currentTotal { problems.append("categories sum to \(current.total) B but the current total is \(currentTotal) B") }
        if currentTotal < 0 { problems.append("current total \(currentTotal) B") }
        if peakTotal < currentTotal { problems.append("peak \(peakTotal) B below the current \(currentTotal) B") }
        if lifetimePeak < peakTotal { problems.append("lifetime peak \(lifetimePeak) B below the peak \(peakTotal) B") }
        return problems.isEmpty ? nil : "memory accountant out of balance: " + problems.joined(separator: "; ")
    }

    /// Throws `AccountantInvariantViolation` naming what is off (see `invariantViolation`).
    public func checkInvariants() throws {
        if let why = invariantViolation() { throw AccountantInvariantViolation(description: why) }
    }

    // MARK: Reports

    /// Bytes in use now by owners whose path is `prefix` or starts with `prefix/`.
    public func currentBytes(ownerPrefix prefix: String) -> CategoryBytes {
        sum(over: ownerCurrent, prefix: prefix)
    }

    /// Bytes held at the moment of the global peak by owners under `prefix`.
    public func peakBytes(ownerPrefix prefix: String) -> CategoryBytes {
        if peakSnapshotStale { snapshotOwnersAtPeak() }
        return sum(over: ownerAtPeak, prefix: prefix)
    }

    private func sum(over table: [CategoryBytes], prefix: String) -> CategoryBytes {
        var out = CategoryBytes()
        for (i, name) in ownerNames.enumerated() where Self.isUnder(name, prefix) {
            for c in 0..<out.bytes.count { out.bytes[c] += table[i].bytes[c] }
        }
        return out
    }

    static func isUnder(_ path: String, _ prefix: String) -> Bool {
        if prefix.isEmpty || path == prefix { return true }
        return path.hasPrefix(prefix) && path.dropFirst(prefix.count).first == "/"
    }

    /// The per-owner table, owners that ever held memory, sorted by bytes held at the peak.
    public func ownerTable() -> [OwnerMemory] {
        if peakSnapshotStale { snapshotOwnersAtPeak() }
        var rows: [OwnerMemory] = []
        for i in 0..<ownerNames.count where ownerPeak[i] > 0 {
            var row = OwnerMemory(owner: ownerNames[i])
            row.current = ownerCurrent[i]
            row.peak = ownerPeak[i]
            row.atGlobalPeak = ownerAtPeak[i]
            rows.append(row)
        }
        return rows.sorted { ($0.atGlobalPeak.total, $0.peak, $1.owner) > ($1.atGlobalPeak.total, $1.peak, $0.owner) }
    }

    /// Totals at the peak grouped by the first `depth` components of the owner path.
    public func peakByOwnerPrefix(depth: Int) -> [(prefix: String, bytes: CategoryBytes)] {
        if peakSnapshotStale { snapshotOwnersAtPeak() }
        var groups: [String: CategoryBytes] = [:]
        for (i, name) in ownerNames.enumerated() where ownerAtPeak[i].total > 0 {
            let key = name.split(separator: "/").prefix(depth).joined(separator: "/")
            var acc = groups[key] ?? CategoryBytes()
            for c in 0..<acc.bytes.count { acc.bytes[c] += ownerAtPeak[i].bytes[c] }
            groups[key] = acc
        }
        return groups.map { ($0.key, $0.value) }.sorted { $0.bytes.total > $1.bytes.total }
    }

    /// A human-readable report: current and peak by category.
    public func summary() -> String {
        func row(_ a: String, _ b: String, _ c: String) -> String {
            a.padding(toLength: 22, withPad: " ", startingAt: 0)
                + String(repeating: " ", count: max(0, 12 - b.count)) + b
                + String(repeating: " ", count: max(0, 14 - c.count)) + c
        }
        var lines = [row("category", "current", "at peak")]
        for c in MemoryCategory.allCases {
            lines.append(row(c.name, formatBytes(current[c]), formatBytes(peakByCategory[c])))
        }
        lines.append(row("total", formatBytes(currentTotal), formatBytes(peakTotal)))
        return lines.joined(separator: "\n")
    }
}

/// `1536` → `1.5 KiB`.
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(bytes), i = 0
    while abs(v) >= 1024, i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(bytes) B" : String(format: "%.2f %@", v, units[i])
}

/// Parses `1.5GiB`, `512MB`, `2048`, `800M` into bytes (binary units for K/M/G with or without `i`).
public func parseBytes(_ text: String) -> Int? {
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    let kib = 1024.0, mib = kib * 1024, gib = mib * 1024, tib = gib * 1024
    let units: [(String, Double)] = [("tib", tib), ("gib", gib), ("mib", mib), ("kib", kib),
                                     ("tb", tib), ("gb", gib), ("mb", mib), ("kb", kib),
                                     ("t", tib), ("g", gib), ("m", mib), ("k", kib), ("b", 1)]
    for (suffix, scale) in units where t.hasSuffix(suffix) {
        guard let v = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), v >= 0 else { return nil }
        return Int(v * scale)
    }
    guard let v = Double(t), v >= 0 else { return nil }
    return Int(v)
}

/// Counts a block of memory that is not a float tensor (raw dataset bytes, label arrays) for
/// as long as the ticket lives. Allocate the block yourself; hold the ticket beside it.
public final class MemoryTicket {
    public let bytes: Int
    public let category: MemoryCategory
    public let owner: Int32
    public let accountant: MemoryAccountant

    public init(bytes: Int, category: MemoryCategory, accountant: MemoryAccountant, owner: Int32? = nil) throws {
        let owner = owner ?? accountant.currentOwner
        try accountant.reserve(bytes: bytes, category: category, owner: owner)
        self.bytes = bytes
        self.category = category
        self.owner = owner
        self.accountant = accountant
    }

    deinit { accountant.release(bytes: bytes, category: category, owner: owner) }
}
