// TensorBoard event files of a search, OUT/tb/events.out.tfevents.*: after every epoch (step =
// the epoch, 1-based, as in log.jsonl) the epoch's scalars, the histograms of α and of the gate's
// mixing weights, and the cells of the genotype derived so far as PNG images (Graphviz's `dot`;
// without it no images). Only the process with an output folder writes (rank 0 of several);
// a dry run writes nothing. A resumed run starts a new file with a session start at its first
// epoch: TensorBoard drops the earlier files' events from that step on (epochs logged after
// the last checkpoint, which the resumed run repeats).
//
// Scalars: loss/{train,valid,arch}, loss/regularizer/<instance key>, accuracy/{train,valid},
// learning_rate/{weights,arch}, value/<name> (the run's named values: gate.tau, regularizer.lambda,
// and what the host publishes), memory/{peak_bytes,predicted_peak_bytes,budget_bytes,
// rss_peak_bytes,unaccounted_bytes}, memory/peak/<category>, time/{epoch_seconds,median_step_seconds}.
// Histograms: alpha/<cell type> and alpha/<cell type>/edge_<e>, weights/<cell type>.
// Images: cell/normal, cell/reduce.

import EspalierCore
import Foundation

extension SearchRun {
    /// The folder of the event files in an output folder.
    public static let tensorBoardFolder = "tb"

    /// What an epoch's log line and the run's state beside it say, as TensorBoard values.
    /// `named`: the run's named values at the epoch's end; `predicted`: the epoch's predicted peak.
    static func tensorBoardValues(_ log: SearchEpochLog, named: [String: Double], predicted: Int?, budget: Int?,
                                  archLearningRate: Float) -> [TensorBoardValue] {
        var v: [TensorBoardValue] = [
            .scalar("loss/train", Float(log.trainLoss)), .scalar("loss/valid", Float(log.validLoss)),
            .scalar("accuracy/train", Float(log.trainAccuracy)), .scalar("accuracy/valid", Float(log.validAccuracy)),
            .scalar("learning_rate/weights", log.learningRate), .scalar("learning_rate/arch", archLearningRate),
            .scalar("memory/peak_bytes", Float(log.peakBytes)),
            .scalar("time/epoch_seconds", Float(log.seconds)), .scalar("time/median_step_seconds", Float(log.medianStepSeconds)),
        ]
        if let a = log.archLoss { v.append(.scalar("loss/arch", Float(a))) }
        for (key, term) in (log.regularizerTerms ?? [:]).sorted(by: { $0.key < $1.key }) { v.append(.scalar("loss/regularizer/" + key, Float(term))) }
        for (name, x) in named.sorted(by: { $0.key < $1.key }) { v.append(.scalar("value/" + name, Float(x))) }
        if let p = predicted { v.append(.scalar("memory/predicted_peak_bytes", Float(p))) }
        if let b = budget { v.append(.scalar("memory/budget_bytes", Float(b))) }
        if let r = log.rssPeakBytes { v.append(.scalar("memory/rss_peak_bytes", Float(r))) }
        if let u = log.unaccountedBytes { v.append(.scalar("memory/unaccounted_bytes", Float(u))) }
        for (c, bytes) in log.peakByCategory.sorted(by: { $0.key < $1.key }) { v.append(.scalar("memory/peak/" + c, Float(bytes))) }
        for (cell, alpha, weights) in [("normal", log.alphaNormal, log.weightsNormal), ("reduce", log.alphaReduce, log.weightsReduce)] {
            func doubles(_ rows: [[Float]]) -> [Double] { rows.flatMap { $0.map(Double.init) } }
            if !doubles(alpha).isEmpty { v.append(.histogram("alpha/" + cell, TensorBoardHistogram(doubles(alpha)))) }
            for (e, row) in alpha.enumerated() where !row.isEmpty {
                v.append(.histogram("alpha/\(cell)/edge_\(e)", TensorBoardHistogram(doubles([row]))))
            }
            if !doubles(weights).isEmpty { v.append(.histogram("weights/" + cell, TensorBoardHistogram(doubles(weights)))) }
        }
        for cell in Genotype.CellType.allCases {
            if let png = log.genotype.png(cell: cell) { v.append(.image("cell/" + cell.rawValue, png: png)) }
        }
        return v
    }

    /// Writes the epoch just logged (no output folder or a dry run: nothing); `predicted`: its
    /// memory timeline row's prediction.
    func writeTensorBoard(_ log: SearchEpochLog, named: [String: Double], predicted: Int?) throws {
        guard let dir = outDirectory, !accountant.isDryRun else { return }
        if records.tensorBoard == nil {
            // A session start at the first epoch this process logs: TensorBoard drops what an
            // earlier process (stopped after its last checkpoint) wrote from there on.
            records.tensorBoard = try TensorBoardWriter(directory: (dir as NSString).appendingPathComponent(Self.tensorBoardFolder), restartAt: log.epoch)
        }
        try records.tensorBoard?.write(step: log.epoch, values: Self.tensorBoardValues(log, named: named, predicted: predicted,
                                                                              budget: accountant.budget,
                                                                              archLearningRate: archOptimizer.learningRate))
    }
}
