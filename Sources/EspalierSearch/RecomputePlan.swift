// Which segments of a network recompute their forward in backward (Graph.recomputed) instead of
// keeping their activations: `--recompute none|ops|edges|cells|auto`. The segments are the
// candidate ops on the edges (each keeps its input and output), the mixed edges into each node
// (recomputed together with the node's mix, which keeps the node's one weighted sum over every
// candidate, so the stored path's summation order), or whole cells (each keeps its inputs and
// output only). `auto` is resolved before a run by RecomputePlanner: the cells to recompute, or
// none when the search fits as it is. Results are bit-identical at every level.

import EspalierCore
import Foundation

/// `--recompute`: what to recompute.
public enum RecomputeMode: String, Codable, CaseIterable, Sendable {
    case none, ops, edges, cells, auto

    /// Parses a flag's or config file's value, or names the choices.
    public init(parsing text: String, what: String = "--recompute") throws {
        guard let m = RecomputeMode(rawValue: text.lowercased()) else {
            throw EspalierError.config("\(what) '\(text)' is not one of \(RecomputeMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = m
    }
}

/// The granularity of the recomputed segments of a network.
public enum RecomputeLevel: String, Codable, Sendable { case ops, edges, cells }

/// What a network recomputes: the level, and which cells it applies to (nil = every cell).
public struct RecomputePlan: Equatable, Sendable {
    public var level: RecomputeLevel?
    public var cells: Set<Int>?
    public static let none = RecomputePlan(level: nil, cells: nil)

    public init(level: RecomputeLevel?, cells: Set<Int>? = nil) {
        self.level = level
        self.cells = cells
    }

    /// The level cell i recomputes at, or nil when it keeps everything.
    public func level(ofCell i: Int) -> RecomputeLevel? {
        guard let level, cells?.contains(i) ?? true else { return nil }
        return level
    }
}

extension SearchConfig {
    /// The plan a run of this config builds its network with. `auto` stands for the cells its
    /// planner chose (`recomputeCells`), none before it chose.
    public var recomputePlan: RecomputePlan {
        switch recompute ?? .none {
        case .none: return .none
        case .ops: return RecomputePlan(level: .ops)
        case .edges: return RecomputePlan(level: .edges)
        case .cells: return RecomputePlan(level: .cells)
        case .auto: return recomputeCells.map { RecomputePlan(level: .cells, cells: Set($0)) } ?? .none
        }
    }
}

extension SearchConfig {
    /// "recompute cells", "recompute auto: cells 0, 3", or nil when nothing is recomputed.
    public var recomputeText: String? {
        switch recompute ?? .none {
        case .none: return nil
        case .auto:
            guard let cells = recomputeCells, !cells.isEmpty else { return nil }
            return "recompute auto: cells " + cells.map(String.init).joined(separator: ", ")
        case let m: return "recompute \(m.rawValue)"
        }
    }
}
