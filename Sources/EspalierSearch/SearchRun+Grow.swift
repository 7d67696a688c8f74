// Changing the supernet's depth during a search (`host->search->grow`): P-DARTS's progressive
// stages (5 → 11 → 17 cells). The supernet is rebuilt with the new cell count and fresh weights,
// as P-DARTS builds a new network per stage; α (and β), every candidate's state (removed ops stay
// removed, so their parameters are never allocated) and the named values carry over; both
// optimisers are rebuilt. The old optimiser state is released first; the old network's
// parameters are released once the new network is built (both are alive for that moment).

import EspalierCore
import EspalierHost
import Foundation

extension SearchRun {
    public func grow(cells: Int) throws {
        guard cells >= 1 else { throw EspalierError.invalidArgument("grow: the cell count must be ≥ 1 (got \(cells))") }
        guard cells != supernet.space.cells else { return }
        var space = supernet.space
        space.cells = cells
        if let r = space.reductionCells, !r.allSatisfy({ $0 < cells }) { space.reductionCells = nil }
        if config.space.reductionCells == nil { space.reductionCells = nil }
        // What carries over.
        let arch = supernet.archParameters.map { $0.value.isVirtual ? [] : $0.value.array }
        let states = [false, true].map { opStates(reduction: $0) }
        let skipDropout = supernet.skipDropout
        let k = space.ops.count
        // Release the optimiser state first.
        weightOptimizer = try accountant.withOwner("optimizer") {
            try SGD(parameters: [], learningRate: weightOptimizer.learningRate, momentum: config.momentum, weightDecay: config.weightDecay)
        }
        archOptimizer = try accountant.withOwner("optimizer") {
            try Adam(parameters: [], learningRate: archOptimizer.learningRate, beta1: config.archBeta1, beta2: config.archBeta2, weightDecay: config.archWeightDecay)
        }
        supernet = try accountant.withOwner("model") {
            try Supernet(space: space, registry: registry, context: context, gateID: config.gate, gateSettings: config.gateSettings,
                         opSettings: config.opSettings, seed: config.seed &+ UInt64(cells) &* 7777)
        }
        for (p, values) in zip(supernet.archParameters, arch) where !values.isEmpty && !p.value.isVirtual {
            for (i, v) in values.enumerated() { p.value[i] = v }
        }
        for (reduction, s) in zip([false, true], states) {
            for (i, raw) in s.enumerated() where raw != OpState.active.rawValue {
                try supernet.setOpState(reduction: reduction, edge: i / k, op: i % k, OpState(rawValue: raw) ?? .active)
            }
        }
        supernet.skipDropout = skipDropout
        let net = supernet
        (weightOptimizer, archOptimizer) = try accountant.withOwner("optimizer") {
            (try SGD(parameters: net.weights, learningRate: weightOptimizer.learningRate, momentum: config.momentum, weightDecay: config.weightDecay),
             try Adam(parameters: net.archParameters, learningRate: archOptimizer.learningRate, beta1: config.archBeta1,
                      beta2: config.archBeta2, weightDecay: config.archWeightDecay))
        }
        costCache = nil
    }
}
