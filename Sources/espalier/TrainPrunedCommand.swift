// `espalier train-pruned --pruned OUT/pruned.json`: Bonsai-Net's derived network (the
// hyper-connected network as the search pruned it: surviving ops per edge and inter-cell inputs
// per cell, each summed with weight 1) trained from scratch, then its test accuracy; its epochs in
// train_pruned_log.jsonl and in TensorBoard's OUT/tb/train-pruned (beside the search's own OUT/tb),
// its outcome in OUT/result.json (TrainingOutcome).

import ArgumentParser
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

struct TrainPrunedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-pruned", abstract: "Train the pruned network of a hyper-connected (Bonsai-Net) search from scratch and report its test accuracy.")

    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "pruned.json written by a hyper-connected `espalier search`.") var pruned: String
    @Option(help: ArgumentHelp(datasetHelp)) var dataset = "fashion-mnist"
    @Option(help: "Dataset folder (an .npz file for --dataset npz).") var dataDir: String?
    @OptionGroup var data: DataOptions
    @Option(help: "Initial channels C (default: the search's).") var channels: Int?
    @Option(help: "Epochs.") var epochs = 4
    @Option(help: "Batch size.") var batchSize = 64
    @Option(help: "Initial learning rate (cosine-annealed to 0).") var lr: Float = 0.05
    @Option(help: "Weight decay.") var weightDecay: Float = 5e-4
    @Option(help: "Cutout length (0 = none).") var cutout = 0
    @Flag(help: "Random crops (padding 2) and horizontal flips.") var augment = false
    @Option(help: "Use only the first N training images (0 = all).") var trainImages = 0
    @Option(help: "Use only the first N test images (0 = all).") var testImages = 0
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "Folder for pruned-model.safetensors, train_pruned_log.jsonl and tb/train-pruned (default: the folder of --pruned).") var out: String?

    func run() throws {
        var arch = try PrunedArchitecture.load(path: pruned)
        if let channels { arch.space.channels = channels }
        let context = HostContext()
        let registry = dirs.loadRegistry(context: context)
        let acc = MemoryAccountant()
        context.begin(accountant: acc, seed: seed)
        let (train, test) = try data.trainAndTest(dataset: dataset, dataDir: dataDir, seed: seed, accountant: acc)
        arch.space.inputChannels = train.channels; arch.space.classes = train.numClasses
        var config = TrainConfig()
        config.epochs = epochs; config.batchSize = batchSize; config.learningRate = lr; config.weightDecay = weightDecay; config.seed = seed
        config.augmentation = Augmentation(cropPadding: augment ? 2 : 0, horizontalFlip: augment, cutoutLength: cutout)
        let predicted = try ClassifierTrainer.predictStepPeak(config: config, inputShape: [batchSize, train.channels, train.height, train.width]) { f in
            try PrunedNetwork(arch, registry: registry, context: HostContext(accountant: f.accountant, seed: seed), seed: seed)
        }
        print("predicted peak of one training step: \(formatBytes(predicted.peakTotal)) + datasets \(formatBytes(train.byteCount + test.byteCount))")
        let net = try acc.withOwner("model") { try PrunedNetwork(arch, registry: registry, context: context, seed: seed) }
        print("pruned network: \(arch.space.cells) cells, \(arch.opCount) ops on edges, \(arch.inputCount) inter-cell inputs, \(net.parameterCount) parameters; "
              + "\(epochs) epochs, batch \(batchSize), lr \(lr) cosine")
        let trainer = try ClassifierTrainer(model: net, accountant: acc, config: config)
        var trainView = train.all, testView = test.all
        if trainImages > 0 { trainView = trainView.prefix(trainImages) }
        if testImages > 0 { testView = testView.prefix(testImages) }
        let outDir = out ?? (pruned as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: outDir.isEmpty ? "." : outDir, withIntermediateDirectories: true)
        let records = try TrainingRecords(jsonl: (outDir as NSString).appendingPathComponent("train_pruned_log.jsonl"),
                                          tensorBoardFolder: (outDir as NSString).appendingPathComponent("tb/train-pruned"),
                                          predictedPeak: predicted.peakTotal + train.byteCount + test.byteCount)
        let bar = ProgressBar(label: "train") { r in
            records.record(r)
            return String(format: "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  %.1fs  peak %@",
                   r.epoch, self.epochs, r.trainLoss, r.trainAccuracy * 100, r.testLoss, r.testAccuracy * 100, r.seconds, formatBytes(r.peakBytes) as NSString)
        }
        let started = DispatchTime.now().uptimeNanoseconds
        let reports = try trainer.fit(train: trainView, test: testView, progress: bar)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let accuracy = reports.last?.testAccuracy ?? 0
        let modelPath = (outDir as NSString).appendingPathComponent("pruned-model.safetensors")
        // The image size too: the pruned network's description (its search space) does not hold it, and an ONNX export needs it.
        try net.save(path: modelPath, extraMetadata: ["espalier.test_accuracy": String(accuracy), "espalier.pruned_file": pruned,
                                                      ONNXExport.imageSizeKey: String(train.height)]
                        .merging(try ModelDataMetadata.entries(dataset: dataset, train: train)) { a, _ in a })
        let flops = try ClassifierTrainer.forwardFlops(imageShape: [train.channels, train.height, train.width]) { dry in
            try PrunedNetwork(arch, registry: registry, context: HostContext(accountant: dry, seed: 0), seed: 0)
        }
        try TrainingOutcome(testAccuracy: accuracy, testImages: testView.count, trainImages: trainView.count, epochs: epochs, seconds: seconds,
                            parameters: net.parameterCount, forwardFlops: flops).write(folder: outDir)
        print(String(format: "test accuracy: %.2f%% on %d images after %d epochs in %.1fs; %d parameters",
                     accuracy * 100, testView.count, epochs, seconds, net.parameterCount))
        print("saved \(modelPath); evaluate with: espalier eval --model \(modelPath)")
    }
}
