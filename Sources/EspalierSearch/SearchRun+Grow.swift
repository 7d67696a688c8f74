// Changing the supernet's depth during a search (`host->search->grow`): P-DARTS's progressive
// stages (5 → 11 → 17 cells). The supernet is rebuilt with the new cell count and fresh weights,
// as P-DARTS builds a new network per stage; α (and β), every candidate's state (removed ops stay
// removed, so their parameters are never allocated) and the named values carry over; both
// optimisers are rebuilt. The old optimiser state is released first; the old network's
// parameters are released once the new network is built (both are alive for that moment).
// Convention (like a regularizer's `owns_update`): a strategy whose parameter
// `grow_keeps_weights` resolves to true (Bonsai-Net, whose sections extend a trained network)
// gets every weight whose name and shape match copied from the old network into the new one;
// the rest (new cells, cells whose shape changed because the reduction cells moved) start fresh,
// and so do the BN running statistics.

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
        let kept: [String: Tensor] = growKeepsWeights
            ? Dictionary(supernet.weights.filter { !$0.value.isVirtual }.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a }) : [:]
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
        for p in supernet.weights where !p.value.isVirtual {
            guard let old = kept[p.name], old.shape == p.value.shape else { continue }
            p.value.ptr.update(from: old.ptr, count: p.value.count)
        }
        let net = supernet
        (weightOptimizer, archOptimizer) = try accountant.withOwner("optimizer") {
            (try SGD(parameters: net.weights, learningRate: weightOptimizer.learningRate, momentum: config.momentum, weightDecay: config.weightDecay),
             try Adam(parameters: net.archParameters, learningRate: archOptimizer.learningRate, beta1: config.archBeta1,
                      beta2: config.archBeta2, weightDecay: config.archWeightDecay))
        }
        costCache = nil
    }

    /// Whether the strategy asks `grow` to keep matching weights (its `grow_keeps_weights` parameter).
    var growKeepsWeights: Bool {
        guard let spec = strategy.component.params.first(where: { $0.name == "grow_keeps_weights" }) else { return false }
        let text = (config.strategySettings["grow_keeps_weights"] ?? spec.defaultValue).lowercased()
        return ["1", "true", "yes", "on"].contains(text)
    }
}
