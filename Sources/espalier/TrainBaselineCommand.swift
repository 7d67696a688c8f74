// `espalier train-baseline`: trains the fixed baseline CNN on any dataset a search reads (Fashion-MNIST,
// CIFAR-10/100, an image folder, an .npz, synthetic data) — the engine's first real job, before
// search exists; its epochs in OUT/train_log.jsonl and TensorBoard's OUT/tb.

import ArgumentParser
import EspalierCore
import EspalierSearch
import Foundation

struct TrainBaselineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-baseline",
        abstract: "Train a small fixed CNN and report test accuracy (proves the engine on real data).")

    @Option(help: ArgumentHelp(datasetHelp)) var dataset = "fashion-mnist"
    @Option(help: "Dataset folder (default: /usr/share/datasets/fashion-mnist for fashion-mnist; an .npz file for --dataset npz).") var dataDir: String?
    @OptionGroup var data: DataOptions
    @Option(help: "Epochs.") var epochs = 4
    @Option(help: "Batch size.") var batchSize = 128
    @Option(help: "Initial learning rate (cosine-annealed to 0).") var lr: Float = 0.05
    @Option(help: "Channel width of the first block.") var width = 16
    @Option(help: "Use only the first N training images (0 = all).") var subset = 0
    @Option(help: "Use only the first N test images (0 = all).") var testSubset = 0
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "Memory budget, e.g. 512MiB; the run stops with an error rather than exceed it.") var memoryBudget: String?
    @Flag(help: "Random horizontal flips and 2-pixel crops.") var augment = false
    @Flag(help: "Only predict the peak memory of one training step, then exit.") var dryRun = false
    @Option(help: "Output folder for train_log.jsonl and TensorBoard's tb/ (default runs/baseline-<time>).") var out: String?
    @Option(help: "Write the JSON lines to this file instead of OUT/train_log.jsonl.") var log: String?

    func run() throws {
        var config = TrainConfig()
        config.epochs = epochs
        config.batchSize = batchSize
        config.learningRate = lr
        config.seed = seed
        if augment { config.augmentation = Augmentation(cropPadding: 2, horizontalFlip: true) }
        var budget: Int? = nil
        if let text = memoryBudget {
            guard let b = parseBytes(text), b > 0 else { throw ValidationError("--memory-budget '\(text)' is not a size; write e.g. 512MiB or 1.5GiB") }
            budget = b
        }
        guard epochs > 0, batchSize > 0 else { throw ValidationError("--epochs and --batch-size must be positive") }

        let acc = MemoryAccountant(budget: budget)
        let (train, test) = try loadData(acc)
        let ds = train.dataset
        let classes = ds.numClasses, inShape = [batchSize, ds.channels, ds.height, ds.width]
        let make: (ParameterFactory) throws -> Classifier = { f in
            try BaselineCNN(f, inChannels: ds.channels, classes: classes, width: width)
        }

        let predicted = try ClassifierTrainer.predictStepPeak(config: config, inputShape: inShape, makeModel: make)
        print("data: \(train.count) training and \(test.count) test images of \(ds.channels)×\(ds.height)×\(ds.width), \(classes) classes (\(formatBytes(ds.byteCount + test.dataset.byteCount)) in memory)")
        print("predicted peak of one training step (batch \(batchSize)): \(formatBytes(predicted.peakTotal)) + datasets")
        for c in MemoryCategory.allCases where predicted.peakByCategory[c] > 0 {
            print("  \(pad(c.name, 22))\(formatBytes(predicted.peakByCategory[c]))")
        }
        if dryRun { return }
        if let budget, predicted.peakTotal + acc.currentTotal > budget {
            throw ValidationError("the predicted peak \(formatBytes(predicted.peakTotal + acc.currentTotal)) (step + data) exceeds --memory-budget \(formatBytes(budget)); lower --batch-size or --width")
        }

        let factory = ParameterFactory(accountant: acc, seed: seed)
        let model = try acc.withOwner("model") { try make(factory) }
        print("model: baseline CNN, \(model.parameterCount) parameters; \(epochs) epochs, batch \(batchSize), lr \(lr) cosine, SGD momentum 0.9, threads \(Parallel.workers)")
        let trainer = try ClassifierTrainer(model: model, accountant: acc, config: config)
        let outDir = out ?? "runs/baseline-" + timestamp()
        try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        let records = try TrainingRecords(jsonl: log ?? (outDir as NSString).appendingPathComponent("train_log.jsonl"),
                                          tensorBoardFolder: (outDir as NSString).appendingPathComponent("tb"),
                                          predictedPeak: predicted.peakTotal + ds.byteCount + test.dataset.byteCount)
        print("output \(outDir); watch it: tensorboard --logdir \(outDir)/tb")
        let bar = ProgressBar(label: "train") { r in
            records.record(r)
            return String(format: "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  lr %.4f  %.1fs  peak %@",
                          r.epoch, self.epochs, r.trainLoss, r.trainAccuracy * 100, r.testLoss, r.testAccuracy * 100,
                          r.learningRate, r.seconds, formatBytes(r.peakBytes) as NSString)
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let reports = try trainer.fit(train: train, test: test, progress: bar)
        let total = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        print(String(format: "test accuracy: %.2f%% after %d epochs in %.1fs", (reports.last?.testAccuracy ?? 0) * 100, epochs, total))
        print("memory at peak:\n" + acc.summary())
    }

    func loadData(_ acc: MemoryAccountant) throws -> (DataView, DataView) {
        let (train, test) = try data.trainAndTest(dataset: dataset, dataDir: dataDir, seed: seed, accountant: acc)
        var trainView = train.all, testView = test.all
        if subset > 0 { trainView = trainView.prefix(subset) }
        if testSubset > 0 { testView = testView.prefix(testSubset) }
        return (trainView, testView)
    }
}
