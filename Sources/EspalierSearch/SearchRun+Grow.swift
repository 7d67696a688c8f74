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
// and so do the BN running statistics. A hyper-connected space (Bonsai-Net) grows by appending
// distinct cells with fresh α, keeps its reductions in place, carries every cell's α, candidate
// and inter-cell input states, and turns the old classifier into an auxiliary head (its weights
// copied) when the space's auxiliaryWeight is > 0.

import EspalierCore
import EspalierHost
import Foundation

extension SearchSpaceDescription {
    /// A hyper-connected space grown (or shrunk) to `n` cells: reductions stay where they are;
    /// growing turns the old classifier into an auxiliary head after the old last cell (when
    /// auxiliaryWeight > 0); heads past the new last cell go.
    public func hyperGrown(to n: Int) -> SearchSpaceDescription {
        var s = self
        s.cells = n
        if n > cells && auxiliaryWeight > 0 && !s.auxiliaryCells.contains(cells - 1) { s.auxiliaryCells.append(cells - 1) }
        s.auxiliaryCells = s.auxiliaryCells.filter { $0 < n - 1 }.sorted()
        return s
    }
}

extension SearchRun {
    /// `auxiliaryCells` (hyper-connected; a checkpoint's): the heads to have instead of the growth's own.
    public func grow(cells: Int, auxiliaryCells: [Int]? = nil) throws {
        guard cells >= 1 else { throw EspalierError.invalidArgument("grow: the cell count must be ≥ 1 (got \(cells))") }
        guard cells != supernet.space.cells || auxiliaryCells != nil else { return }
        let oldCells = supernet.space.cells
        var space = supernet.space
        if space.hyperConnected {
            space = space.hyperGrown(to: cells)
            if let auxiliaryCells { space.auxiliaryCells = auxiliaryCells }
        } else {
            space.cells = cells
            if let r = space.reductionCells, !r.allSatisfy({ $0 < cells }) { space.reductionCells = nil }
            if config.space.reductionCells == nil { space.reductionCells = nil }
        }
        // What carries over: α by name (hyper-connected: each cell's own; new cells get fresh α),
        // candidate states per slot, inter-cell input states per cell.
        let arch = Dictionary(supernet.archParameters.filter { !$0.value.isVirtual }.map { ($0.name, $0.value.array) }, uniquingKeysWith: { a, _ in a })
        let states = (0..<supernet.slotCount).map { opStates(slot: $0) }
        let inputStates = inputStatesByCell()
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
        let drawMargin = supernet.drawMargin
        supernet = try accountant.withOwner("model") {
            try Supernet(space: space, registry: registry, context: context, gateID: config.gate, gateSettings: config.gateSettings,
                         opSettings: config.opSettings, seed: config.seed &+ UInt64(cells) &* 7777)
        }
        supernet.drawMargin = drawMargin   // a prediction's worst case goes on
        for p in supernet.archParameters where !p.value.isVirtual {
            guard let values = arch[p.name], values.count == p.count else { continue }
            for (i, v) in values.enumerated() { p.value[i] = v }
        }
        for (slot, s) in states.enumerated() where slot < supernet.slotCount {
            for (i, raw) in s.enumerated() where raw != OpState.active.rawValue {
                try supernet.setOpState(slot: slot, edge: i / k, op: i % k, OpState(rawValue: raw) ?? .active)
            }
        }
        try applyInputStates(inputStates)
        supernet.skipDropout = skipDropout
        supernet.recompute = config.recomputePlan
        // Hyper-connected growth: the old classifier lives on as the new auxiliary head.
        let auxPrefix = "/aux\(oldCells - 1)/"
        for p in supernet.weights where !p.value.isVirtual {
            let source = space.hyperConnected && cells > oldCells && p.name.contains(auxPrefix)
                ? p.name.replacingOccurrences(of: auxPrefix, with: "/classifier/") : p.name
            guard let old = kept[source], old.shape == p.value.shape else { continue }
            p.value.ptr.update(from: old.ptr, count: p.value.count)
        }
        let net = supernet
        (weightOptimizer, archOptimizer) = try accountant.withOwner("optimizer") {
            (try SGD(parameters: net.weights, learningRate: weightOptimizer.learningRate, momentum: config.momentum, weightDecay: config.weightDecay),
             try Adam(parameters: net.archParameters, learningRate: archOptimizer.learningRate, beta1: config.archBeta1,
                      beta2: config.archBeta2, weightDecay: config.archWeightDecay))
        }
        updates.costCache = nil
    }

    /// Candidate states of a slot, (edges × ops) flattened.
    func opStates(slot: Int) -> [Int32] {
        let sp = supernet.space
        return (0..<sp.edgesPerCell).flatMap { e in (0..<sp.ops.count).map { supernet.opState(slot: slot, edge: e, op: $0).rawValue } }
    }

    /// Hyper-connected: every cell's inter-cell input states ([] per cell otherwise).
    func inputStatesByCell() -> [[Int32]] {
        supernet.space.hyperConnected ? supernet.cells.map { $0.inputStates.map(\.rawValue) } : []
    }

    /// Applies inter-cell input states (per cell, as `inputStatesByCell` gives them) to the cells that exist.
    func applyInputStates(_ states: [[Int32]]) throws {
        guard supernet.space.hyperConnected else { return }
        for (cell, s) in states.enumerated() where cell < supernet.cells.count {
            for (j, raw) in s.enumerated() where raw != OpState.active.rawValue && j < supernet.cells[cell].inputs.count {
                try setInputState(cell: cell, input: j, OpState(rawValue: raw) ?? .active)
            }
        }
    }

    /// Whether the strategy asks `grow` to keep matching weights (its `grow_keeps_weights` parameter).
    var growKeepsWeights: Bool {
        guard let spec = strategy.component.params.first(where: { $0.name == "grow_keeps_weights" }) else { return false }
        let text = (config.strategySettings["grow_keeps_weights"] ?? spec.defaultValue).lowercased()
        return ["1", "true", "yes", "on"].contains(text)
    }
}
