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

import CEspalierSDK
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
    /// FLOPs the dry run counted (forward and backward, recomputed forwards included).
    public var flops = 0
    /// What each recomputed segment's forward measured, by segment (`cell3`, …), summed over the
    /// dry run's forwards (Graph.segmentMeasures).
    public var segments: [String: SegmentMeasure] = [:]
    /// A sampled gate's: the most a real draw can hold above the dry run's on one edge at one
    /// moment (SearchCell.pickCostliest); part of `stepPeak`, in no category or owner of the
    /// accountant's. 0 for every other gate.
    public var drawMargin = 0
    public var stepPeak: Int { accountant.peakTotal - datasetBytes + drawMargin }
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
            for (name, v) in values.sorted(by: { $0.key < $1.key }) { try run.services.setValue(name, v) }
            try run.firstStep()
            return nil
        }
    }

    /// The peak of a whole run of `config`, predicted before it starts (what `--memory-budget` is
    /// checked against): the dry run goes through every epoch as the loop does — epoch_begin, one
    /// step, the epoch's evaluation, epoch_end — and the peak is the largest of them (the network
    /// as it is built included). Masks and removals a strategy makes land on the cheapest
    /// candidates of each edge (`SearchServices.setOpState(slot:…)`), so which candidates the real run drops
    /// cannot take it higher. One step per epoch: the steps of an epoch allocate alike.
    /// `throughEpoch`: simulate epochs 0…that one only (the budget planner's variants of a run
    /// whose full prediction peaked there; the knobs it turns do not move a schedule).
    /// `ranks`: the peak of rank `rank` of a search on `size` ranks (its share of every batch, the
    /// exchange buffers), which is what `--memory-budget` bounds on every rank.
    public static func predictRun(config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                                  throughEpoch: Int? = nil, ranks: (rank: Int, size: Int) = (0, 1)) throws -> StepPrediction {
        try predict(config: config, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks) { run in
            try run.simulateEpochs(through: throughEpoch)
        }
    }

    /// A dry-run accountant, a context of its own (closed afterwards, so both are freed with the
    /// prediction), the stand-in dataset (two batches) and the run; `body` takes its steps (and
    /// returns the epoch of a whole run's peak).
    /// A sampled gate's worst case runs, on each edge, the candidates that keep the most, and adds
    /// the most any edge's running candidate can hold above them (SearchCell.pickCostliest).
    private static func predict(config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                                ranks: (rank: Int, size: Int) = (0, 1), _ body: (SearchRun) throws -> Int?) throws -> StepPrediction {
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
        run.services.predictionView = PredictionChoices()
        run.graph.segmentMeasures = [:]
        let peakEpoch = try body(run)
        var p = StepPrediction(accountant: dry, datasetBytes: ds.byteCount)
        p.flops = run.graph.flops
        p.segments = run.graph.segmentMeasures ?? [:]
        p.peakEpoch = peakEpoch
        p.drawMargin = run.supernet.drawMargin
        return p
    }

    /// Takes the first step of epoch 0 outside the loop (the same allocations as the loop's first step).
    public func firstStep() throws {
        weightOptimizer.learningRate = updates.schedule.learningRate(epoch: 0)
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
            weightOptimizer.learningRate = updates.schedule.learningRate(epoch: epoch)
            try withSectionValues { try strategy.epochBegin(state) }
            position.tally.onlySkippedThisEpoch = true
            let batch = try accountant.withOwner("batch") { try trainLoader.nextCycling(accountant: accountant) }
            let valid = try accountant.withOwner("batch") { try validLoader.nextCycling(accountant: accountant) }
            try step(train: batch, valid: valid)
            globalStep += 1
            if !position.tally.onlySkippedThisEpoch { _ = try evaluate(data.validEvalView) }
            _ = try supernet.mixingWeights(reduction: false, accountant: accountant)
            _ = try supernet.mixingWeights(reduction: true, accountant: accountant)
            let removedBefore = supernet.space.sumOps ? removedCount() : 0
            // A stop may rest on values a dry run does not have (a patience on the accuracy), so
            // the prediction goes on to the last epoch: more epochs can only raise the bound.
            _ = try withSectionValues { try strategy.epochEnd(state, metrics: EpochMetrics()) }
            if supernet.space.sumOps && removedCount() > removedBefore { _ = try evaluate(data.validEvalView) }
            if accountant.peakTotal > peak { peak = accountant.peakTotal; peakEpoch = epoch }
            epoch += 1
        }
        return peakEpoch
    }

    /// The predicted step peak of this run as it is now (its current depth, masked and removed
    /// candidates left out, its named values such as skip_dropout set) after `change` ({"cells": n, "batch": b, "channels": c}).
    public func predictPeak(change: String) throws -> StepPrediction {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(change.utf8)) as? [String: Any] else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "predict_peak: '\(change)' is not a JSON object")
        }
        var c = config
        c.space = supernet.space
        c.memoryBudget = accountant.budget ?? accountant.plannedBudget ?? config.memoryBudget
        for (k, v) in obj {
            guard let n = (v as? NSNumber)?.intValue, n > 0 else {
                throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "predict_peak: '\(k)' must be a positive integer")
            }
            switch k {
            case "cells": c.space = c.space.hyperConnected ? c.space.hyperGrown(to: n) : { var s = c.space; s.cells = n; return s }()
            case "batch": c.batchSize = n
            case "channels": c.space.channels = n
            case "nodes": c.space.nodes = n; c.space.multiplier = min(c.space.multiplier, n)
            default: throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "predict_peak: unknown change '\(k)'; known: cells, batch, channels, nodes")
            }
        }
        let ds = trainLoader.view.dataset
        // The live run's masked and removed candidates stay out of the prediction (same space shape only).
        return try SearchRun.predictStep(config: c, registry: registry, imageShape: (ds.channels, ds.height, ds.width), classes: ds.numClasses,
                                         opStates: supernet.hyperConnected ? nil : (opStates(reduction: false), opStates(reduction: true)),
                                         slotStates: supernet.hyperConnected ? (0..<supernet.slotCount).map { opStates(slot: $0) } : nil,
                                         inputStates: inputStatesByCell(), values: services.values, ranks: (ranks.rank, ranks.size))
    }

    /// Bytes each candidate of `edge` keeps in the cells of `slot` (parameters, gradients and
    /// momentum, and the activations its forward keeps; 0 for removed ones), for ranking. The
    /// measurement needs the edges' input shapes: without them (before the first step, or after
    /// `grow`) one forward pass without gradients is taken first, as a real run's first step does.
    func candidateBytes(slot: Int, edge: Int) throws -> [Float] {
        let k = supernet.space.ops.count
        if updates.costCache == nil && supernet.cells.contains(where: { $0.lastInputShape == nil }) {
            let loader = try DataLoader(trainLoader.view, batchSize: config.batchSize, shuffle: false, dropLast: true)
            let b = try accountant.withOwner("batch") { try loader.nextCycling(accountant: accountant) }
            try graph.noGrad { _ = try lossAndGradients(b.images, b.labels, backward: false) }
        }
        _ = try slotCosts()   // fills the cache: every candidate not removed, masked ones included
        guard let cache = updates.costCache, slot < cache.slots.count else { return Array(repeating: 0, count: k) }
        return Array(cache.slots[slot].memory[(edge * k)..<(edge * k + k)])
    }
}
