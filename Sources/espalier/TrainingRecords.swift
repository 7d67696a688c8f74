// What every training command (`train`, `train-pruned`, `train-baseline`) records of its epochs:
// one JSON line per epoch (EpochReport) and the same epoch as TensorBoard scalars, step = the epoch,
// in a folder of its own (`tensorboard --logdir` shows it as a run).

import EspalierCore
import Foundation

final class TrainingRecords {
    let log: FileHandle
    let tensorBoard: TensorBoardWriter
    /// The dry run's step peak plus the datasets, logged every epoch as memory/predicted_peak_bytes.
    let predictedPeak: Int?

    /// Starts `jsonl` (emptied) and a TensorBoard event file in `tensorBoardFolder`; `images` (the
    /// cells trained, as PNGs) are written once at step 0.
    init(jsonl: String, tensorBoardFolder: String, predictedPeak: Int?, images: [TensorBoardValue] = []) throws {
        guard FileManager.default.createFile(atPath: jsonl, contents: nil), let handle = FileHandle(forWritingAtPath: jsonl) else {
            throw EspalierError.data(file: jsonl, problem: "cannot be created; choose an output folder you can write (--out)")
        }
        log = handle
        tensorBoard = try TensorBoardWriter(directory: tensorBoardFolder)
        self.predictedPeak = predictedPeak
        if !images.isEmpty { try tensorBoard.write(step: 0, values: images) }
    }

    /// Appends the epoch to both; a failed event write is a warning (the JSON line still stands).
    func record(_ r: EpochReport) {
        if let line = try? JSONEncoder().encode(r) { log.write(line + Data("\n".utf8)) }
        do { try tensorBoard.write(step: r.epoch, values: r.tensorBoardValues(predictedPeak: predictedPeak)) } catch {
            FileHandle.standardError.write(Data("warning: \(error)\n".utf8))
        }
    }
}
