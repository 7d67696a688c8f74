// Recomputation chosen by the accountant (`--recompute auto`): one dry-run step with every cell
// recomputed, and one with every node's edges recomputed, measure each segment — the bytes its
// forward kept that recomputing frees, and its forward FLOPs (what recomputing costs again in
// backward). For each of the two granularities the segments are taken greedily by bytes freed per
// FLOP, best first, and the fewest that make the whole run's predicted peak fit the budget are
// found by bisection on that order, each candidate checked by a real dry run of the run, never
// extrapolated; of the two, the choice that costs the fewer FLOPs wins. The same measures give the
// figures `espalier memory` and the budget planner show: each level's peak and extra compute.

import EspalierCore
import EspalierHost
import Foundation

/// What a recompute choice gives: the predicted peak (step + dataset) and its price in FLOPs.
public struct RecomputeFigure: Sendable {
    /// The `--recompute` value (and, for auto, the segments it chose).
    public let mode: RecomputeMode
    public let segments: [String]?
    /// The whole run's predicted peak, the dataset included.
    public let predicted: Int
    /// Forward FLOPs recomputed per step, and the step's FLOPs without recomputation.
    public let extraFlops: Int
    public let stepFlops: Int

    /// The extra compute as a share of a step's (a time estimate: a step's time follows its FLOPs).
    public var extraShare: Double { stepFlops > 0 ? Double(extraFlops) / Double(stepFlops) : 0 }
    public var extraPercent: String { "+\(Int((extraShare * 100).rounded())) % compute" }

    public var flag: String { mode == .auto ? "--recompute auto" : "--recompute \(mode.rawValue)" }
    public var description: String {
        flag + (mode == .auto ? " (\(Self.list(segments ?? [])))" : "") + ": predicted \(formatBytes(predicted)), about \(extraPercent)"
    }

    /// "cells 0, 3" / "4 nodes' edges (cell0/node1, …)" / "nothing".
    public static func list(_ segments: [String]) -> String {
        if segments.isEmpty { return "nothing" }
        if segments.allSatisfy({ !$0.contains("/") }) { return "cells " + segments.map { String($0.dropFirst(4)) }.joined(separator: ", ") }
        let shown = segments.prefix(4).joined(separator: ", ") + (segments.count > 4 ? ", …" : "")
        return "\(segments.count) nodes' edges (\(shown))"
    }
}

public enum RecomputePlanner {
    public struct Problem {
        public let config: SearchConfig
        public let registry: PluginRegistry
        public let imageShape: (c: Int, h: Int, w: Int)
        public let classes: Int
        public let datasetBytes: Int
        /// The rank whose peak bounds every rank's, of how many.
        public let ranks: (rank: Int, size: Int)

        public init(config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                    datasetBytes: Int, ranks: (rank: Int, size: Int) = (0, 1)) {
            self.config = config; self.registry = registry; self.imageShape = imageShape; self.classes = classes
            self.datasetBytes = datasetBytes; self.ranks = ranks
        }

        /// The config at `mode` (auto: with exactly `segments`).
        public func with(_ mode: RecomputeMode, segments: [String]? = nil) -> SearchConfig {
            var c = config
            c.recompute = mode
            c.recomputeSegments = mode == .auto ? (segments ?? []) : nil
            return c
        }

        /// The whole run's predicted peak with `c`, the dataset included.
        public func peak(_ c: SearchConfig) throws -> Int {
            try SearchRun.predictRun(config: c, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks).stepPeak + datasetBytes
        }

        /// One step's dry run with `c`: its FLOPs and the segments' measures.
        func step(_ c: SearchConfig) throws -> StepPrediction {
            try SearchRun.predictStep(config: c, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks)
        }
    }

    /// One step's segment measures at `level` (cells or edges), by segment name. Segments holding
    /// an op that may not run twice are not in it (never recomputed).
    public static func measures(_ p: Problem, level: RecomputeMode) throws -> [String: SegmentMeasure] {
        try p.step(p.with(level)).segments
    }

    /// The segments greedily by bytes freed per forward FLOP, best first (ties: by name).
    public static func greedyOrder(_ measures: [String: SegmentMeasure]) -> [String] {
        measures.sorted { a, b in
            let ra = Double(a.value.droppedBytes) / Double(max(a.value.flops, 1))
            let rb = Double(b.value.droppedBytes) / Double(max(b.value.flops, 1))
            return ra != rb ? ra > rb : a.key < b.key
        }.map(\.key)
    }

    /// `--recompute auto` under `budget` (bytes, the dataset included): nothing when the run fits
    /// as it is; else, of whole cells and of nodes' edges, the fewest segments (greedy order) that
    /// fit, whichever costs the fewer FLOPs; nil when even every segment of both does not fit.
    public static func choose(_ p: Problem, budget: Int) throws -> RecomputeFigure? {
        try choose(budget: budget, stepFlops: try p.step(p.with(.none)).flops, measures: { try measures(p, level: $0) },
                   peak: { try p.peak(p.with(.auto, segments: $0)) })
    }

    /// The choice for any network: `measures(level)` gives one step's segment measures with every
    /// segment of `level` (cells or edges) recomputed; `peak(segments)` the predicted peak with
    /// exactly those recomputed (`[]`: none).
    public static func choose(budget: Int, stepFlops: Int, measures: (RecomputeMode) throws -> [String: SegmentMeasure],
                              peak: ([String]) throws -> Int) throws -> RecomputeFigure? {
        let none = try peak([])
        if none <= budget { return RecomputeFigure(mode: .auto, segments: [], predicted: none, extraFlops: 0, stepFlops: stepFlops) }
        var best: RecomputeFigure? = nil
        for level in [RecomputeMode.cells, .edges] {
            let m = try measures(level)
            let order = greedyOrder(m)
            func need(_ k: Int) throws -> Int { try peak(Array(order.prefix(k))) }
            guard !order.isEmpty, case let all = try need(order.count), all <= budget else { continue }
            var lo = 0, hi = order.count, fit = all   // prefix lo does not fit, hi does
            while hi - lo > 1 {
                let mid = (lo + hi) / 2, n = try need(mid)
                if n <= budget { hi = mid; fit = n } else { lo = mid }
            }
            let chosen = Array(order.prefix(hi))
            let figure = RecomputeFigure(mode: .auto, segments: chosen.sorted(), predicted: fit,
                                         extraFlops: chosen.reduce(0) { $0 + m[$1]!.flops }, stepFlops: stepFlops)
            if best == nil || figure.extraFlops < best!.extraFlops { best = figure }
        }
        return best
    }

    /// The predicted peak and price of each fixed level (none, ops, edges, cells).
    public static func levels(_ p: Problem) throws -> [RecomputeFigure] {
        let stepFlops = try p.step(p.with(.none)).flops
        return try [RecomputeMode.none, .ops, .edges, .cells].map { mode in
            let c = p.with(mode)
            let extra = mode == .none ? 0 : try p.step(c).flops - stepFlops
            return RecomputeFigure(mode: mode, segments: nil, predicted: try p.peak(c), extraFlops: extra, stepFlops: stepFlops)
        }
    }

    /// The least any recomputation level needs (the smallest predicted peak of ops, edges, cells).
    public static func smallest(_ p: Problem) throws -> RecomputeFigure {
        try levels(p).dropFirst().min { $0.predicted < $1.predicted }!
    }
}
