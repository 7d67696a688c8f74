// Predicting a search step's peak memory before any real memory is used: the same run is built
// in a dry-run accountant (shapes only; every allocation counted, nothing computed) and one step
// is taken. The dataset is not part of a step: its bytes are reported apart.
// `predictRun` predicts a whole run before it starts: the dry run goes through every epoch as the
// loop does (epoch_begin, a step, the epoch's evaluation, epoch_end), so whatever a strategy
// changes on a schedule — stages that grow the network, skip-connect dropout, children it
// trains, ops it prunes before training — is in the peak, the maximum over the run. In every
// prediction, where a strategy's choice depends on values a dry run does not have (α, scores,
// norms), the host takes the costliest outcome: an edge on which the strategy masks or removes n
// candidates loses its n cheapest ones (as a sampled gate's prediction runs the costliest draw
// per edge); the strategy's own dry-run choices (DropNAS: drop nothing; random search: the
// uniform children) are in its plugin.

import EspalierCore
import EspalierHost
import Foundation

public struct StepPrediction {
    /// The accountant of the dry run (peaks by category and owner).
    public let accountant: MemoryAccountant
    /// Bytes of the stand-in dataset, to subtract: the prediction covers model, optimiser, batches and the step.
    public let datasetBytes: Int
    /// A whole-run prediction: the first epoch (0-based) at which the peak was reached.
    public var peakEpoch: Int? = nil
    public var stepPeak: Int { accountant.peakTotal - datasetBytes }
}

extension SearchRun {
    /// Builds `config`'s run in a dry-run accountant and takes one step. `opStates` (normal,
    /// reduce; edges × ops, as `opStates(reduction:)` gives them) carries a live run's masked and
    /// removed candidates into the prediction, so they are not counted; `slotStates` does the same
    /// per slot (a hyper-connected space's cells) and `inputStates` for inter-cell inputs;
    /// `values` (a live run's named values: skip_dropout, gate.tau, …) are set before the step,
    /// so what they change (P-DARTS's dropout masks) is in it.
    public static func predictStep(config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                                   opStates: (normal: [Int32], reduce: [Int32])? = nil, slotStates: [[Int32]]? = nil,
                                   inputStates: [[Int32]]? = nil, values: [String: Double] = [:],
                                   ranks: (rank: Int, size: Int) = (0, 1)) throws -> StepPrediction {
        try predict(config: config, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks) { run in
            let k = run.config.space.ops.count
            if let opStates, opStates.normal.count == run.config.space.edgesPerCell * k, opStates.reduce.count == opStates.normal.count {
                for (reduction, states) in [(false, opStates.normal), (true, opStates.reduce)] {
                    for (i, raw) in states.enumerated() where raw != OpState.active.rawValue {
                        try run.setOpState(reduction: reduction, edge: i / k, op: i % k, OpState(rawValue: raw) ?? .active)
                    }
                }
            }
            // Per slot (a hyper-connected space's cells), and its inter-cell inputs, where they exist.
            for (slot, states) in (slotStates ?? []).enumerated() where slot < run.supernet.slotCount && states.count == run.config.space.edgesPerCell * k {
                for (i, raw) in states.enumerated() where raw != OpState.active.rawValue {
                    try run.setOpState(slot: slot, edge: i / k, op: i % k, OpState(rawValue: raw) ?? .active)
                }
            }
            try run.applyInputStates(inputStates ?? [])
            for (name, v) in values.sorted(by: { $0.key < $1.key }) { try run.setValue(name, v) }
            try run.firstStep()
        }
    }

    /// The peak of a whole run of `config`, predicted before it starts (what `--memory-budget` is
    /// checked against): the dry run goes through every epoch as the loop does — epoch_begin, one
    /// step, the epoch's evaluation, epoch_end — and the peak is the largest of them (the network
    /// as it is built included). Masks and removals a strategy makes land on the cheapest
    /// candidates of each edge (`strategySetOpState`), so which candidates the real run drops
    /// cannot take it higher. One step per epoch: the steps of an epoch allocate alike.
    /// `throughEpoch`: simulate epochs 0…that one only (the budget planner's variants of a run
    /// whose full prediction peaked there; the knobs it turns do not move a schedule).
    /// `ranks`: the peak of rank `rank` of a search on `size` ranks (its share of every batch, the
    /// exchange buffers), which is what `--memory-budget` bounds on every rank.
    public static func predictRun(config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                                  throughEpoch: Int? = nil, ranks: (rank: Int, size: Int) = (0, 1)) throws -> StepPrediction {
        var peakEpoch = 0
        var p = try predict(config: config, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks) { run in
            peakEpoch = try run.simulateEpochs(through: throughEpoch)
        }
        p.peakEpoch = peakEpoch
        return p
    }

    /// A dry-run accountant, a context of its own (closed afterwards, so both are freed with the
    /// prediction), the stand-in dataset (two batches) and the run; `body` takes its steps.
    private static func predict(config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                                ranks: (rank: Int, size: Int) = (0, 1), _ body: (SearchRun) throws -> Void) throws -> StepPrediction {
        let dry = MemoryAccountant(mode: .dryRun)
        dry.plannedBudget = config.memoryBudget   // what a strategy that grows inside the budget plans with
        let context = HostContext(accountant: dry, seed: config.seed)
        defer { context.close() }
        let ds = try dry.withOwner("dataset") {
            try Dataset.synthetic(count: 2 * config.batchSize, channels: imageShape.c, height: imageShape.h, width: imageShape.w,
                                  classes: classes, seed: 0, accountant: dry)
        }
        var cfg = config
        cfg.trainImages = nil
        let comm: Communicator = ranks.size > 1 ? SimulatedRanks(rank: ranks.rank, size: ranks.size) : SingleProcess()
        let run = try SearchRun(config: cfg, registry: registry, context: context, train: ds.all, outDirectory: nil, ranks: comm)
        predictionChoices[ObjectIdentifier(run)] = PredictionChoices()
        defer { run.endPrediction() }
        try body(run)
        return StepPrediction(accountant: dry, datasetBytes: ds.byteCount)
    }

    /// Takes the first step of epoch 0 outside the loop (the same allocations as the loop's first step).
    public func firstStep() throws {
        weightOptimizer.learningRate = schedule.learningRate(epoch: 0)
        guard let batch = try accountant.withOwner("batch", { try trainLoader.next(accountant: accountant) }) else {
            throw EspalierError.config("no training batch: the training half holds fewer images than one batch")
        }
        let valid = try accountant.withOwner("batch") { try validLoader.nextCycling(accountant: accountant) }
        try step(train: batch, valid: valid)
    }

    /// The loop of `run()` in a dry run, one step per epoch: the strategy's epoch_begin, a step,
    /// the validation pass and mixing weights the loop makes, epoch_end (and the evaluation of a
    /// network that epoch_end pruned), to the last epoch (or `through`). Returns the first epoch
    /// at which the peak was reached.
    func simulateEpochs(through last: Int? = nil) throws -> Int {
        precondition(accountant.isDryRun, "simulateEpochs is a prediction: a dry run only")
        var peak = accountant.peakTotal, peakEpoch = 0
        while epoch < config.epochs && epoch <= (last ?? Int.max) {
            weightOptimizer.learningRate = schedule.learningRate(epoch: epoch)
            try withSectionValues { try strategy.epochBegin(state) }
            onlySkippedThisEpoch = true
            let batch = try accountant.withOwner("batch") { try trainLoader.nextCycling(accountant: accountant) }
            let valid = try accountant.withOwner("batch") { try validLoader.nextCycling(accountant: accountant) }
            try step(train: batch, valid: valid)
            globalStep += 1
            if !onlySkippedThisEpoch { _ = try evaluate(validEvalView) }
            _ = try supernet.mixingWeights(reduction: false, accountant: accountant)
            _ = try supernet.mixingWeights(reduction: true, accountant: accountant)
            let removedBefore = supernet.space.sumOps ? removedCount() : 0
            // A stop may rest on values a dry run does not have (a patience on the accuracy), so
            // the prediction goes on to the last epoch: more epochs can only raise the bound.
            _ = try withSectionValues { try strategy.epochEnd(state, metrics: EpochMetrics()) }
            if supernet.space.sumOps && removedCount() > removedBefore { _ = try evaluate(validEvalView) }
            if accountant.peakTotal > peak { peak = accountant.peakTotal; peakEpoch = epoch }
            epoch += 1
        }
        return peakEpoch
    }

    /// Forgets a prediction's bookkeeping (called when its dry run ends).
    func endPrediction() { predictionChoices[ObjectIdentifier(self)] = nil }

    // MARK: The strategy's op states in a prediction

    /// A candidate's state as the strategy set it (`get_op_state`): in a prediction the
    /// strategy's own view, which may name other candidates than the supernet's (see below).
    func strategyOpState(slot: Int, edge: Int, op: Int) -> OpState {
        let k = supernet.space.ops.count
        if let view = predictionChoices[ObjectIdentifier(self)]?.view[slot], edge * k + op < view.count {
            return OpState(rawValue: view[edge * k + op]) ?? .active
        }
        return supernet.opState(slot: slot, edge: edge, op: op)
    }

    /// `set_op_state` from a strategy. In a prediction the strategy's choice rests on
    /// values a dry run does not have (α, scores, norms), so the host keeps the strategy's view
    /// (what `get_op_state` answers) and applies its counts instead: an edge on which the view has
    /// r removed and m masked candidates loses its r cheapest for good and masks the next m
    /// cheapest (bytes each keeps, measured once per candidate and shape), so the prediction
    /// bounds whichever candidates the real run drops. Elsewhere: the state as asked.
    func strategySetOpState(slot: Int, edge: Int, op: Int, _ state: OpState) throws {
        guard let choices = predictionChoices[ObjectIdentifier(self)] else {
            return try setOpState(slot: slot, edge: edge, op: op, state)
        }
        let k = supernet.space.ops.count
        guard slot >= 0, slot < supernet.slotCount, edge >= 0, edge < supernet.space.edgesPerCell, op >= 0, op < k else {
            return try setOpState(slot: slot, edge: edge, op: op, state)   // the supernet names the mistake
        }
        var view = choices.view[slot] ?? opStates(slot: slot)
        if view.count != supernet.space.edgesPerCell * k { view = opStates(slot: slot) }
        if view[edge * k + op] == OpState.removed.rawValue && state != .removed {
            throw EspalierError.invalidArgument("candidate \(supernet.space.opNames[op]) on edge \(edge) was removed for good")
        }
        view[edge * k + op] = state.rawValue
        choices.view[slot] = view
        let row = Array(view[(edge * k)..<(edge * k + k)])
        let removed = row.filter { $0 == OpState.removed.rawValue }.count
        let masked = row.filter { $0 == OpState.masked.rawValue }.count
        let bytes = try candidateBytes(slot: slot, edge: edge)
        let cheapestFirst = (0..<k).sorted { bytes[$0] != bytes[$1] ? bytes[$0] < bytes[$1] : $0 < $1 }
        var gone = Set((0..<k).filter { supernet.opState(slot: slot, edge: edge, op: $0) == .removed })
        for o in cheapestFirst where gone.count < removed && !gone.contains(o) {
            try setOpState(slot: slot, edge: edge, op: o, .removed)
            gone.insert(o)
        }
        for (i, o) in cheapestFirst.filter({ !gone.contains($0) }).enumerated() {
            let want: OpState = i < masked ? .masked : .active
            if supernet.opState(slot: slot, edge: edge, op: o) != want { try setOpState(slot: slot, edge: edge, op: o, want) }
        }
    }

    /// Bytes each candidate of `edge` keeps in the cells of `slot` (parameters, gradients and
    /// momentum, and the activations its forward keeps; 0 for removed ones), for ranking. The
    /// measurement needs the edges' input shapes: without them (before the first step, or after
    /// `grow`) one forward pass without gradients is taken first, as a real run's first step does.
    func candidateBytes(slot: Int, edge: Int) throws -> [Float] {
        let k = supernet.space.ops.count
        if costCache == nil && supernet.cells.contains(where: { $0.lastInputShape == nil }) {
            let loader = try DataLoader(trainLoader.view, batchSize: config.batchSize, shuffle: false, dropLast: true)
            let b = try accountant.withOwner("batch") { try loader.nextCycling(accountant: accountant) }
            try graph.noGrad { _ = try lossAndGradients(b.images, b.labels, backward: false) }
        }
        _ = try slotCosts()   // fills the cache: every candidate not removed, masked ones included
        guard let cache = costCache, slot < cache.slots.count else { return Array(repeating: 0, count: k) }
        return Array(cache.slots[slot].memory[(edge * k)..<(edge * k + k)])
    }
}

/// What a prediction keeps about a strategy's op states: per slot, (edges·ops) as the strategy
/// set them.
final class PredictionChoices {
    var view: [Int: [Int32]] = [:]
}

/// Side table: the prediction a run is (an extension cannot add stored properties).
/// Host thread only; the entry is removed when the prediction ends.
nonisolated(unsafe) var predictionChoices: [ObjectIdentifier: PredictionChoices] = [:]
