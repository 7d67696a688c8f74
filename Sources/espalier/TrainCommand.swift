// `espalier train --genotype FILE`: builds the discrete network of a found genotype (each op with
// the settings the search recorded for it, and per-cell op settings when it has them: FiGS's
// exported widths; `--set OP.PARAM=V` and `--config FILE` override them), trains it from scratch
// and saves model.safetensors (the settings used are in its metadata), train_log.jsonl, result.json
// (TrainingOutcome) and TensorBoard event files in OUT/tb; `espalier eval --model FILE`: evaluates a saved model.

import ArgumentParser
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train", abstract: "Train the network of a genotype from scratch and save model.safetensors.")

    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "genotype.json written by `espalier search`.") var genotype: String
    @Option(help: "Output folder (default: beside the genotype, train-<time>).") var out: String?
    @Option(help: ArgumentHelp(datasetHelp)) var dataset = "fashion-mnist"
    @Option(help: "Dataset folder (an .npz file for --dataset npz).") var dataDir: String?
    @OptionGroup var data: DataOptions
    // Defaults: the measured CPU setting (C=8, 5 cells, 8 epochs: 27 min on 2 cores, 93.1 % on
    // Fashion-MNIST with a searched genotype); DARTS's CIFAR setting is C=36, 20 cells, 600 epochs.
    @Option(help: "Initial channels C.") var channels = 8
    @Option(help: "Cells (default 5; a genotype with per-cell entries, FiGS's export, sets its own).") var cells: Int?
    @Option(help: "Epochs.") var epochs = 8
    @Option(help: "Batch size.") var batchSize = 96
    @Option(help: "Initial learning rate (cosine-annealed to 0).") var lr: Float = 0.05
    @Option(help: "Weight decay.") var weightDecay: Float = 3e-4
    @Flag(help: "Add the auxiliary head after the second reduction.") var auxiliary = false
    @Option(help: "Weight of the auxiliary loss.") var auxiliaryWeight: Float = 0.4
    @Option(help: "Drop-path probability at the last epoch.") var dropPath: Float = 0
    @Option(help: "Cutout length (0 = none).") var cutout = 0
    @Flag(help: "Random crops (padding 2) and horizontal flips.") var augment = false
    @Option(help: "Use only the first N training images (0 = all).") var trainImages = 0
    @Option(help: "Use only the first N test images (0 = all).") var testImages = 0
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "Memory budget, e.g. 1GiB.") var memoryBudget: String?
    @Option(help: "What backward recomputes instead of keeping: none, ops, edges, cells or auto (the fewest that make --memory-budget fit); results are bit-identical. Also 'recompute' in --config.")
    var recompute: String?
    @Option(name: .customLong("set"), help: "OP.PARAM=VALUE: an op setting over the one the search recorded, e.g. swish.beta_init=0.5 or org.example.op.swish/1.beta_init=0.5 (repeatable).")
    var sets: [String] = []
    @Option(help: "A JSON or YAML file whose 'set' maps OP.PARAM to values, and 'recompute' (flags override it).") var config: String?
    @Flag(help: "Also write OUT/model.onnx after training (as `espalier export` does).") var onnx = false

    /// The `--config` file's and `--set` flags' op settings (flags win).
    func settingOverrides() throws -> [String: String] {
        var out: [String: String] = [:]
        if let config {
            let request = try SelectionRequest.load(file: config)
            let extra = [("strategy", request.strategy != nil), ("gate", request.gate != nil), ("ops", request.ops != nil), ("regularizers", request.regularizers != nil)]
                .filter(\.1).map(\.0)
            guard extra.isEmpty else {
                throw EspalierError.config("\(config): train builds the genotype's own ops; its config may only hold 'set' and 'recompute' (found \(extra.joined(separator: ", ")))")
            }
            out = request.set ?? [:]
        }
        return out.merging(try SelectionRequest.settings(fromFlags: sets)) { _, flag in flag }
    }

    /// `--recompute`, else the config file's `recompute`, else none.
    func recomputeMode() throws -> RecomputeMode {
        guard let text = try recompute ?? config.map({ try SelectionRequest.load(file: $0) })?.recompute else { return .none }
        do { return try RecomputeMode(parsing: text, what: recompute != nil ? "--recompute" : "the config file's recompute") } catch {
            throw ValidationError("\(error)")
        }
    }

    @Flag(help: "Train in this process instead of a supervised worker process (also ESPALIER_SUPERVISE=0).") var noSupervise = false

    func run() throws {
        // Supervised as a search is: a plugin that crashes the worker is named (Supervisor.swift).
        if Supervisor.enabled && !noSupervise { try Supervisor.run(extraArguments: [], outDir: nil) }
        if Supervisor.isWorker { Supervisor.attachWorker() }
        let context = HostContext()
        let registry = dirs.loadRegistry(context: context)
        let g = try Genotype.load(path: genotype).overridingSettings(try settingOverrides(), registry: registry)
        var budget: Int? = nil
        if let text = memoryBudget {
            guard let b = parseBytes(text), b > 0 else { throw ValidationError("--memory-budget '\(text)' is not a size; write e.g. 1GiB") }
            budget = b
        }
        let acc = MemoryAccountant(budget: budget)
        context.begin(accountant: acc, seed: seed)
        let (train, test) = try data.trainAndTest(dataset: dataset, dataDir: dataDir, seed: seed, accountant: acc)
        var d = NetworkDescription(genotype: g)
        d.inputChannels = train.channels; d.classes = train.numClasses; d.imageSize = train.height
        d.channels = channels; d.cells = cells ?? g.perCell?.count ?? 5
        d.auxiliary = auxiliary; d.auxiliaryWeight = auxiliaryWeight; d.dropPath = dropPath
        if let why = d.deadEnd {
            print("warning: this network's output cannot depend on its input: \(why); training it will stay at chance. "
                  + "Search again with a smaller cost weight (FiGS's λ, GSparsity's μ).")
        }
        var config = TrainConfig()
        config.epochs = epochs; config.batchSize = batchSize; config.learningRate = lr; config.weightDecay = weightDecay
        config.seed = seed
        config.augmentation = Augmentation(cropPadding: augment ? 2 : 0, horizontalFlip: augment, cutoutLength: cutout)

        // Predict the step's peak first (a dry run of the same network and step), with what it recomputes.
        func predict(_ plan: RecomputePlan) throws -> (accountant: MemoryAccountant, flops: Int, segments: [String: SegmentMeasure]) {
            try ClassifierTrainer.predictStep(config: config, inputShape: [batchSize, train.channels, train.height, train.width]) { f in
                let net = try DiscreteNetwork(d, registry: registry, context: HostContext(accountant: f.accountant, seed: seed), seed: seed)
                net.recompute = plan
                return net
            }
        }
        let held = acc.currentTotal   // the datasets
        let mode = try recomputeMode()
        // The least these levels need (the datasets included), for a refusal.
        func least(_ levels: [RecomputeMode] = [.ops, .edges, .cells]) throws -> Int {
            try levels.map { try predict(RecomputePlan($0)).accountant.peakTotal + held }.min()!
        }
        var plan = RecomputePlan(mode, chosen: [])
        if mode == .auto, let budget {
            guard let choice = try RecomputePlanner.choose(budget: budget, stepFlops: try predict(.none).flops,
                                                           measures: { try predict(RecomputePlan($0)).segments },
                                                           peak: { try predict(RecomputePlan(chosen: Set($0))).accountant.peakTotal + held }) else {
                throw ValidationError("--memory-budget \(formatBytes(budget)) is below what this training needs even with the most recomputation: "
                                      + "\(formatBytes(try least())) (the datasets included). Raise --memory-budget to at least that, or lower --batch-size or --channels")
            }
            plan = RecomputePlan(.auto, chosen: choice.segments)
            print(choice.segments!.isEmpty ? "recompute auto: the training fits --memory-budget \(formatBytes(budget)) as it is; nothing is recomputed"
                  : "recompute auto: \(RecomputeFigure.list(choice.segments!)) recomputed in backward, about \(choice.extraPercent)")
        }
        let predicted = try predict(plan).accountant
        print("predicted peak of one training step: \(formatBytes(predicted.peakTotal)) + datasets \(formatBytes(train.byteCount + test.byteCount))"
              + (mode == .none ? "" : " (--recompute \(mode.rawValue))"))
        if let budget, predicted.peakTotal + held > budget {
            let recomputeFits = try mode == .none && least([.edges, .cells]) <= budget   // what auto chooses among
            throw ValidationError("the predicted peak \(formatBytes(predicted.peakTotal + held)) exceeds --memory-budget \(formatBytes(budget)); "
                                  + (recomputeFits ? "--recompute auto fits it (the same training, a forward more of what it recomputes), or " : "")
                                  + "lower --batch-size or --channels")
        }

        let net = try acc.withOwner("model") { try DiscreteNetwork(d, registry: registry, context: context, seed: seed) }
        net.recompute = plan
        let outDir = out ?? ((genotype as NSString).deletingLastPathComponent as NSString).appendingPathComponent("train-" + timestamp())
        try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        let flops = try DiscreteNetwork.forwardFlops(d, registry: registry)
        let opSettings = g.usedOpIDs.sorted { $0.key < $1.key }.compactMap { name, id -> String? in
            guard let s = net.ops.first(where: { $0.component.id == id })?.settings, !s.isEmpty else { return nil }
            return "\(name) " + s.keys.sorted().map { "\($0)=\(s[$0]!)" }.joined(separator: " ")
        }
        if !opSettings.isEmpty {
            print("op settings" + (g.settings == nil ? " (the genotype records none: defaults)" : "") + ": " + opSettings.joined(separator: "; "))
        }
        print("network: C=\(channels), \(d.cells) cells\(auxiliary ? ", auxiliary head" : ""), \(net.parameterCount) parameters, "
              + String(format: "%.2f MFLOPs per image (forward); ", Double(flops) / 1e6)
              + "\(epochs) epochs, batch \(batchSize), lr \(lr) cosine; output \(outDir)")
        let trainer = try ClassifierTrainer(model: net, accountant: acc, config: config)
        // A recomputed segment's replay draws the plugins' randomness again from where its forward did.
        trainer.graph.externalRandomness = (get: { [weak context] in context?.rng }, set: { [weak context] in context?.rng = $0 })
        var trainView = train.all, testView = test.all
        if trainImages > 0 { trainView = trainView.prefix(trainImages) }
        if testImages > 0 { testView = testView.prefix(testImages) }
        net.stepsPerEpoch = (trainView.count + batchSize - 1) / batchSize   // the trainer keeps the last partial batch
        net.providesRunState(to: context)   // the ops' plugin calls see the real epoch and step
        // TensorBoard (OUT/tb): the cells trained as images at step 0, each epoch's scalars at step = the epoch.
        let cellImages = Genotype.CellType.allCases.compactMap { c in g.png(cell: c).map { TensorBoardValue.image("cell/" + c.rawValue, png: $0) } }
        let records = try TrainingRecords(jsonl: (outDir as NSString).appendingPathComponent("train_log.jsonl"),
                                          tensorBoardFolder: (outDir as NSString).appendingPathComponent("tb"),
                                          predictedPeak: predicted.peakTotal + train.byteCount + test.byteCount, images: cellImages)
        let bar = ProgressBar(label: "train") { r in
            records.record(r)
            return String(format: "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  %.1fs  peak %@",
                          r.epoch, self.epochs, r.trainLoss, r.trainAccuracy * 100, r.testLoss, r.testAccuracy * 100, r.seconds,
                          formatBytes(r.peakBytes) as NSString)
        }
        let started = DispatchTime.now().uptimeNanoseconds
        let reports = try trainer.fit(train: trainView, test: testView, progress: bar)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let modelPath = (outDir as NSString).appendingPathComponent("model.safetensors")
        let acc1 = reports.last?.testAccuracy ?? 0
        let metadata = ["espalier.test_accuracy": String(acc1), "espalier.genotype_file": genotype]
            .merging(try ModelDataMetadata.entries(dataset: dataset, train: train)) { a, _ in a }
        try net.save(path: modelPath, extraMetadata: metadata)
        try TrainingOutcome(testAccuracy: acc1, testImages: testView.count, trainImages: trainView.count, epochs: epochs, seconds: seconds,
                            parameters: net.parameterCount, forwardFlops: flops).write(folder: outDir)
        print(String(format: "test accuracy: %.2f%% on %d images after %d epochs in %.1fs", acc1 * 100, testView.count, epochs, seconds))
        print("saved \(modelPath); evaluate with: espalier eval --model \(modelPath)")
        if onnx {
            let target = (outDir as NSString).appendingPathComponent("model.onnx")
            print(ONNXExport.summary(target, try ONNXExport.write(net, modelMetadata: metadata, to: target, accountant: acc)))
        } else {
            print("export it: espalier export --model \(modelPath)")
        }
    }
}

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "eval", abstract: "Evaluate a model saved by `espalier train` or `espalier train-pruned` on the test set.")
    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "model.safetensors (or the folder holding it).") var model: String
    @Option(help: ArgumentHelp(datasetHelp)) var dataset = "fashion-mnist"
    @Option(help: "Dataset folder (an .npz file for --dataset npz).") var dataDir: String?
    @OptionGroup var data: DataOptions
    @Option(help: "Use only the first N test images (0 = all).") var testImages = 0
    @Option(help: "Batch size.") var batchSize = 256

    func run() throws {
        let path = savedModelFile(model)
        let context = HostContext()
        let registry = dirs.loadRegistry(context: context)
        let acc = MemoryAccountant()
        context.begin(accountant: acc, seed: 0)
        let (net, meta) = try loadClassifier(path: path, registry: registry, context: context)
        var c = SearchConfig()
        c.dataset = dataset; c.dataDir = dataDir
        try data.apply(to: &c)
        try ModelDataMetadata.apply(meta, file: path, to: &c)   // the class names and normalisation it was trained with
        let test = try loadTrainingData(c, accountant: acc, split: .test)
        var view = test.all
        if testImages > 0 { view = view.prefix(testImages) }
        var config = TrainConfig()
        config.batchSize = batchSize
        let trainer = try ClassifierTrainer(model: net, accountant: acc, config: config)
        // A recomputed segment's replay draws the plugins' randomness again from where its forward did.
        trainer.graph.externalRandomness = (get: { [weak context] in context?.rng }, set: { [weak context] in context?.rng = $0 })
        let started = DispatchTime.now().uptimeNanoseconds
        let (loss, accuracy) = try trainer.evaluate(view)
        print(String(format: "test loss %.4f  accuracy %.2f%% on %d images (%.1fs)", loss, accuracy * 100, view.count,
                     Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9))
    }
}

/// `--model` as a file: a folder stands for the model in it (`espalier train` writes
/// model.safetensors, `espalier train-pruned` pruned-model.safetensors).
func savedModelFile(_ given: String) -> String {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: given, isDirectory: &isDir), isDir.boolValue else { return given }
    let plain = (given as NSString).appendingPathComponent("model.safetensors")
    let pruned = (given as NSString).appendingPathComponent("pruned-model.safetensors")
    return FileManager.default.fileExists(atPath: plain) || !FileManager.default.fileExists(atPath: pruned) ? plain : pruned
}
