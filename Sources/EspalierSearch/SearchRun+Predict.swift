// Predicting a search step's peak memory before any real memory is used: the same run is built
// in a dry-run accountant (shapes only; every allocation counted, nothing computed) and one step
// is taken. The dataset is not part of a step: its bytes are reported apart.

import EspalierCore
import EspalierHost
import Foundation

public struct StepPrediction {
    /// The accountant of the dry run (peaks by category and owner).
    public let accountant: MemoryAccountant
    /// Bytes of the stand-in dataset, to subtract: the prediction covers model, optimiser, batches and the step.
    public let datasetBytes: Int
    public var stepPeak: Int { accountant.peakTotal - datasetBytes }
}

extension SearchRun {
    /// Builds `config`'s run in a dry-run accountant and takes one step. `opStates` (normal,
    /// reduce; edges × ops, as `opStates(reduction:)` gives them) carries a live run's masked and
    /// removed candidates into the prediction, so they are not counted; `slotStates` does the same
    /// per slot (a hyper-connected space's cells) and `inputStates` for inter-cell inputs.
    public static func predictStep(config: SearchConfig, registry: PluginRegistry, imageShape: (c: Int, h: Int, w: Int), classes: Int,
                                   opStates: (normal: [Int32], reduce: [Int32])? = nil, slotStates: [[Int32]]? = nil,
                                   inputStates: [[Int32]]? = nil) throws -> StepPrediction {
        let dry = MemoryAccountant(mode: .dryRun)
        let context = HostContext(accountant: dry, seed: config.seed)
        let ds = try dry.withOwner("dataset") {
            try Dataset.synthetic(count: 2 * config.batchSize, channels: imageShape.c, height: imageShape.h, width: imageShape.w,
                                  classes: classes, seed: 0, accountant: dry)
        }
        var cfg = config
        cfg.trainImages = nil
        let run = try SearchRun(config: cfg, registry: registry, context: context, train: ds.all, outDirectory: nil)
        let k = cfg.space.ops.count
        if let opStates, opStates.normal.count == cfg.space.edgesPerCell * k, opStates.reduce.count == opStates.normal.count {
            for (reduction, states) in [(false, opStates.normal), (true, opStates.reduce)] {
                for (i, raw) in states.enumerated() where raw != OpState.active.rawValue {
                    try run.setOpState(reduction: reduction, edge: i / k, op: i % k, OpState(rawValue: raw) ?? .active)
                }
            }
        }
        // Per slot (a hyper-connected space's cells), and its inter-cell inputs, where they exist.
        for (slot, states) in (slotStates ?? []).enumerated() where slot < run.supernet.slotCount && states.count == cfg.space.edgesPerCell * k {
            for (i, raw) in states.enumerated() where raw != OpState.active.rawValue {
                try run.setOpState(slot: slot, edge: i / k, op: i % k, OpState(rawValue: raw) ?? .active)
            }
        }
        try run.applyInputStates(inputStates ?? [])
        try run.firstStep()
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
}
