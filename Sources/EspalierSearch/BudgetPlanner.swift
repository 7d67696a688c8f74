// What fits a memory budget: when a search's predicted peak exceeds `--memory-budget`, the
// planner asks the accountant's dry run about smaller variants of the same run — first the same
// search with recomputation (`--recompute auto`: the fewest cells or nodes recomputed in backward, the
// search itself unchanged, its price in extra compute), then those that change it: a smaller batch,
// partial channels (PC-DARTS's C/K on every edge), fewer cells, fewer channels — and reports, for
// each knob alone, the largest setting that fits — and the smallest number of ranks (mpirun -np N,
// each rank holding its share of every batch) whose per-rank peak fits. Each answer is a real dry-run prediction of that
// configuration's run (as the budget check makes it, through the epoch at which the run's own
// prediction peaked; shapes only, nothing is computed), never an extrapolation.

import EspalierCore
import EspalierHost
import Foundation

public struct BudgetSuggestion: Sendable, CustomStringConvertible {
    /// The flag to change, as a user would write it (e.g. "--batch-size 24").
    public let change: String
    /// The predicted peak with that change (step + dataset).
    public let predicted: Int
    public var description: String { "\(change) (predicted \(formatBytes(predicted)))" }
}

public enum BudgetPlanner {
    /// Suggestions that fit `budget` (bytes, including `datasetBytes`), each changing one knob.
    /// `ranks`: the rank count the run has now (the other knobs keep it; the ranks knob goes above it).
    public static func suggestions(for config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                                   datasetBytes: Int, budget: Int, ranks: Int = 1) -> [BudgetSuggestion] {
        // The variants keep the run's schedule (stages, warm-up, pruning), so each is simulated up
        // to the epoch at which the run's own prediction peaked, not through every epoch.
        let through = (try? SearchRun.predictRun(config: config, registry: registry, imageShape: imageShape, classes: classes,
                                                 ranks: (ranks - 1, ranks)))?.peakEpoch
        // The last rank holds the largest share of every batch (⌈B/N⌉), so its peak bounds every rank's.
        func need(_ c: SearchConfig, ranks n: Int = ranks) -> Int? {
            (try? SearchRun.predictRun(config: c, registry: registry, imageShape: imageShape, classes: classes, throughEpoch: through,
                                       ranks: (n - 1, n)))
                .map { $0.stepPeak + datasetBytes }
        }
        var out: [BudgetSuggestion] = []
        // Recomputation first: the same search, bit for bit, for one more forward of what it recomputes.
        if config.recompute != .auto {
            let problem = RecomputePlanner.Problem(config: config, registry: registry, imageShape: imageShape, classes: classes,
                                                   datasetBytes: datasetBytes, ranks: (ranks - 1, ranks))
            if let choice = try? RecomputePlanner.choose(problem, budget: budget), let segments = choice.segments, !segments.isEmpty {
                out.append(BudgetSuggestion(change: "--recompute auto (recomputes \(RecomputeFigure.list(segments)); about \(choice.extraPercent), "
                                                + "the search unchanged)", predicted: choice.predicted))
            }
        }
        // The largest batch that fits (the peak grows with the batch, so bisect).
        if config.batchSize > 1 {
            var lo = 0, hi = config.batchSize   // lo fits (0 = none found), hi does not
            var best: (Int, Int)? = nil
            while hi - lo > 1 {
                let mid = (lo + hi) / 2
                var c = config; c.batchSize = mid
                if let n = need(c), n <= budget { lo = mid; best = (mid, n) } else { hi = mid }
            }
            if let (b, n) = best { out.append(BudgetSuggestion(change: "--batch-size \(b)", predicted: n)) }
        }
        // Partial channels: the smallest K (of 2, 4, 8 dividing C) that fits.
        if config.space.partialChannels == 1 {
            for k in [2, 4, 8] where config.space.channels % k == 0 {
                var c = config; c.space.partialChannels = k
                if let n = need(c), n <= budget {
                    out.append(BudgetSuggestion(change: "--partial-channels \(k)", predicted: n))
                    break
                }
            }
        }
        // The most cells that fit.
        for cells in stride(from: config.space.cells - 1, through: 1, by: -1) {
            var c = config; c.space.cells = cells; c.space.reductionCells = nil
            if let n = need(c), n <= budget {
                out.append(BudgetSuggestion(change: "--cells \(cells)", predicted: n))
                break
            }
        }
        // The most channels that fit (even, and divisible by K).
        let k = config.space.partialChannels
        for ch in stride(from: config.space.channels - 1, through: 2, by: -1) where ch % 2 == 0 && ch % k == 0 {
            var c = config; c.space.channels = ch
            if let n = need(c), n <= budget {
                out.append(BudgetSuggestion(change: "--channels \(ch)", predicted: n))
                break
            }
        }
        // The fewest ranks whose per-rank peak fits (each rank needs one sample of the batch; at most 256).
        let most = min(config.batchSize / max(config.bnGroups ?? 1, 1), 256)
        if most > ranks, let n = need(config, ranks: most), n <= budget {
            var lo = ranks, hi = most, best = (most, n)   // lo does not fit, hi fits
            while hi - lo > 1 {
                let mid = (lo + hi) / 2
                if let m = need(config, ranks: mid), m <= budget { hi = mid; best = (mid, m) } else { lo = mid }
            }
            out.append(BudgetSuggestion(change: "mpirun -np \(best.0) (run on \(best.0) ranks, the batch shared)", predicted: best.1))
        }
        return out
    }
}
