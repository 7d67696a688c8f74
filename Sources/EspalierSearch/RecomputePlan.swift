// Which segments of a network recompute their forward in backward (Graph.recomputed) instead of
// keeping their activations: `--recompute none|ops|edges|cells|auto`. The segments are the
// candidate ops on the edges (each keeps its input and output), the mixed edges into each node
// (recomputed together with the node's mix, which keeps the node's one weighted sum over every
// candidate, so the stored path's summation order), or whole cells (each keeps its inputs and
// output only). `auto` is resolved before a run by RecomputePlanner: the cells or nodes to
// recompute, or none when the search fits as it is. Results are bit-identical at every level.

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

/// What a network recomputes: every segment of one level, or (auto) exactly the segments named —
/// `cell3` (a whole cell), `cell3/node1` (the edges into a node, with its mix).
public struct RecomputePlan: Equatable, Sendable {
    public var level: RecomputeLevel?
    public var chosen: Set<String>?
    public static let none = RecomputePlan(level: nil)

    public init(level: RecomputeLevel?) { self.level = level; chosen = nil }
    public init(chosen: Set<String>) { level = nil; self.chosen = chosen }

    /// A fixed `--recompute` level (none, ops, edges, cells); `auto` recomputes `chosen`.
    public init(_ mode: RecomputeMode, chosen: [String]? = nil) {
        switch mode {
        case .none: self = .none
        case .ops: self.init(level: .ops)
        case .edges: self.init(level: .edges)
        case .cells: self.init(level: .cells)
        case .auto: self = chosen.map { RecomputePlan(chosen: Set($0)) } ?? .none
        }
    }

    /// Is `segment` (of `level`) recomputed?
    public func recomputes(_ segment: String, at level: RecomputeLevel) -> Bool {
        if let chosen { return chosen.contains(segment) }
        return self.level == level
    }
}

extension SearchConfig {
    /// The plan a run of this config builds its network with. `auto` stands for the segments its
    /// planner chose (`recomputeSegments`), none before it chose.
    public var recomputePlan: RecomputePlan { RecomputePlan(recompute ?? .none, chosen: recomputeSegments) }

    /// "recompute cells", "recompute auto: 5 segments (cell0/node1, …)", or nil when nothing is recomputed.
    public var recomputeText: String? {
        switch recompute ?? .none {
        case .none: return nil
        case .auto:
            guard let segments = recomputeSegments, !segments.isEmpty else { return nil }
            return "recompute auto: \(RecomputeFigure.list(segments))"
        case let m: return "recompute \(m.rawValue)"
        }
    }
}
