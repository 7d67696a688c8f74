// Recomputation chosen by the accountant (`--recompute auto`): a dry run of one step with every
// cell recomputed measures, per cell, the bytes its forward kept that recomputing frees and its
// forward FLOPs (what recomputing costs again in backward). The cells are taken greedily by bytes
// freed per FLOP, best first, and the fewest that make the whole run's predicted peak fit the
// budget are recomputed — each candidate set checked by a real dry run of the run, never
// extrapolated. The same measures give the figures `espalier memory` and the budget planner show:
// the peak at each level and the extra compute it costs.

import EspalierCore
import EspalierHost
import Foundation

/// What a recompute choice gives: the predicted peak (step + dataset) and its price in FLOPs.
public struct RecomputeFigure: Sendable {
    /// The `--recompute` value (and, for auto, the cells it chose).
    public let mode: RecomputeMode
    public let cells: [Int]?
    /// The whole run's predicted peak, the dataset included.
    public let predicted: Int
    /// Forward FLOPs recomputed per step, and the step's FLOPs without recomputation.
    public let extraFlops: Int
    public let stepFlops: Int

    /// The extra compute as a share of a step's (a time estimate: a step's time follows its FLOPs).
    public var extraShare: Double { stepFlops > 0 ? Double(extraFlops) / Double(stepFlops) : 0 }

    public var flag: String {
        mode == .auto ? "--recompute auto" + (cells.map { " (cells \($0.map(String.init).joined(separator: ", ")))" } ?? "") : "--recompute \(mode.rawValue)"
    }
    public var description: String {
        "\(flag): predicted \(formatBytes(predicted)), about +\(Int((extraShare * 100).rounded())) % compute"
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

        func with(_ mode: RecomputeMode, cells: [Int]? = nil) -> SearchConfig {
            var c = config
            c.recompute = mode
            c.recomputeCells = mode == .auto ? (cells ?? []) : nil
            return c
        }

        /// The whole run's predicted peak with `c`, the dataset included.
        func peak(_ c: SearchConfig) throws -> Int {
            try SearchRun.predictRun(config: c, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks).stepPeak + datasetBytes
        }

        /// One step's dry run with `c`: its FLOPs and the segments' measures.
        func step(_ c: SearchConfig) throws -> StepPrediction {
            try SearchRun.predictStep(config: c, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks)
        }
    }

    /// Every cell's measure (one step with every cell recomputed), and the step's FLOPs without
    /// recomputation. Cells holding an op that may not run twice are not in it (never recomputed).
    public static func cellMeasures(_ p: Problem) throws -> (cells: [(cell: Int, measure: SegmentMeasure)], stepFlops: Int) {
        let all = try p.step(p.with(.cells))
        let plain = try p.step(p.with(.none))
        let cells = all.segments.compactMap { name, m -> (Int, SegmentMeasure)? in
            guard name.hasPrefix("cell"), let i = Int(name.dropFirst(4)) else { return nil }
            return (i, m)
        }.sorted { $0.0 < $1.0 }
        return (cells.map { (cell: $0.0, measure: $0.1) }, plain.flops)
    }

    /// The cells greedily by bytes freed per forward FLOP, best first (ties: the earlier cell).
    public static func greedyOrder(_ cells: [(cell: Int, measure: SegmentMeasure)]) -> [(cell: Int, measure: SegmentMeasure)] {
        cells.sorted { a, b in
            let ra = Double(a.measure.droppedBytes) / Double(max(a.measure.flops, 1))
            let rb = Double(b.measure.droppedBytes) / Double(max(b.measure.flops, 1))
            return ra != rb ? ra > rb : a.cell < b.cell
        }
    }

    /// `--recompute auto` under `budget` (bytes, the dataset included): the fewest cells, taken by
    /// bytes freed per FLOP, whose recomputation makes the run fit — none when it fits as it is —
    /// or nil when even recomputing every cell does not fit.
    public static func chooseCells(_ p: Problem, budget: Int) throws -> RecomputeFigure? {
        let measured = try cellMeasures(p)
        let none = try p.peak(p.with(.auto, cells: []))
        if none <= budget { return RecomputeFigure(mode: .auto, cells: [], predicted: none, extraFlops: 0, stepFlops: measured.stepFlops) }
        var chosen: [Int] = [], extra = 0
        for (cell, m) in greedyOrder(measured.cells) {
            chosen.append(cell)
            extra += m.flops
            let need = try p.peak(p.with(.auto, cells: chosen.sorted()))
            if need <= budget { return RecomputeFigure(mode: .auto, cells: chosen.sorted(), predicted: need, extraFlops: extra, stepFlops: measured.stepFlops) }
        }
        return nil
    }

    /// The predicted peak and price of each fixed level (none, ops, edges, cells).
    public static func levels(_ p: Problem) throws -> [RecomputeFigure] {
        let stepFlops = try p.step(p.with(.none)).flops
        return try [RecomputeMode.none, .ops, .edges, .cells].map { mode in
            let c = p.with(mode)
            let extra = mode == .none ? 0 : try p.step(c).flops - stepFlops
            return RecomputeFigure(mode: mode, cells: nil, predicted: try p.peak(c), extraFlops: extra, stepFlops: stepFlops)
        }
    }

    /// The least any recomputation level needs (the smallest predicted peak of ops, edges, cells).
    public static func smallest(_ p: Problem) throws -> RecomputeFigure {
        try levels(p).dropFirst().min { $0.predicted < $1.predicted }!
    }
}
