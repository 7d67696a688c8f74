// `espalier search`: a one-shot architecture search on the plugin ABI (DARTS by default), and
// `espalier memory` (= `search --dry-run`): the accountant's predicted peak of one step.
// With no arguments it runs a short DARTS search on Fashion-MNIST (the README's main job).

import ArgumentParser
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

/// The options shared by `search` and `memory`.
struct SearchOptions: ParsableArguments {
    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "A JSON or YAML config (strategy, gate, ops, regularizers, set); flags override it.") var config: String?
    @Option(help: "Strategy id.") var strategy: String?
    @Option(help: "Gate id.") var gate: String?
    @Option(help: "Gate for per-channel masks (role 'channel'), e.g. espalier.gate.figs/1 for the FiGS ops.") var channelGate: String?
    @Option(name: .customLong("channel-gate-set"), help: "KEY=VALUE setting of the channel gate, e.g. tau=0.001 (repeatable).") var channelGateSets: [String] = []
    @Option(name: .customLong("op"), help: "Candidate op id (repeatable; default: the 8 DARTS ops).") var ops: [String] = []
    @Option(name: .customLong("regularizer"), help: "Regularizer id (repeatable), e.g. espalier.regularizer.beta-decay/1.") var regularizers: [String] = []
    @Option(name: .customLong("merged-op"), help: "An op standing for several candidates on every edge (MergeNAS), e.g. espalier.op.mergenas_conv/1.") var mergedOps: [String] = []
    @Option(name: .customLong("set"), help: "KEY=VALUE: strategy.order=second, gate.tau=2, OPNAME.PARAM=V, SLOT=METHOD (repeatable).") var sets: [String] = []

    @Option(help: "Dataset: fashion-mnist, cifar10 or synthetic.") var dataset: String?
    @Option(help: "Dataset folder.") var dataDir: String?
    @Option(help: "Use the first N training images (split 50/50 into weight and architecture halves).") var trainImages: Int?
    @Option(help: "Validation images scored after each epoch.") var evalImages: Int?
    @Option(help: "Initial channels C.") var channels: Int?
    @Option(help: "Cells (layers).") var cells: Int?
    @Option(help: "Intermediate nodes per cell.") var nodes: Int?
    @Option(help: "Batch size.") var batchSize: Int?
    @Option(help: "Partial channels K: each edge's ops see C/K channels (PC-DARTS's memory saving; any strategy).") var partialChannels: Int?
    @Flag(help: "Bonsai-Net's relaxed hyper-connected space: distinct cells (α per cell), each taking the previous cell plus a gated sum of all earlier cells (needs a gate for inputs, e.g. espalier.gate.sawwave/1).") var hyperConnected = false
    @Option(help: "How a node combines its candidates: sum (DARTS) or concat (FiGS's concat aggregator: concat → 1×1 conv → BN, so ops may keep their own output widths).")
    var aggregator: String?
    @Option(help: "Epochs.") var epochs: Int?
    @Option(help: "Weight learning rate (cosine to 0.001).") var lr: Float?
    @Option(help: "Architecture learning rate (Adam).") var archLr: Float?
    @Option(help: "Architecture weight decay (Adam; default 1e-3; Bonsai-Net's pruners want 0).") var archWeightDecay: Float?
    @Option(help: "Recompute batch-norm statistics over N training batches before each evaluation (0 = off; GSparsity's default 20).")
    var bnRecalibration: Int?
    @Option(help: "Random seed.") var seed: UInt64?
    @Option(help: "Memory budget, e.g. 1.5GiB: refused before the run if the prediction exceeds it, never exceeded during it.") var memoryBudget: String?

    /// The config: DARTS defaults (or the short quick search when nothing shapes the run), then flags.
    func makeConfig(quickDefaults: Bool) throws -> SearchConfig {
        var c = quickDefaults ? SearchConfig.quick : SearchConfig()
        if let v = dataset { c.dataset = v }
        if let v = dataDir { c.dataDir = v }
        if let v = trainImages { c.trainImages = v > 0 ? v : nil }
        if let v = evalImages { c.evalImages = v > 0 ? v : nil }
        if let v = channels { c.space.channels = v }
        if let v = cells { c.space.cells = v }
        if let v = nodes { c.space.nodes = v; c.space.multiplier = min(c.space.multiplier, v) }
        if let v = batchSize { c.batchSize = v }
        if let v = partialChannels { c.space.partialChannels = v }
        if hyperConnected { c.space.hyperConnected = true }
        if let v = aggregator {
            guard let a = NodeAggregator(rawValue: v.lowercased()) else {
                throw ValidationError("--aggregator '\(v)' is not one of \(NodeAggregator.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            c.space.aggregator = a
        }
        if let v = channelGate { c.channelGate = v }
        if !channelGateSets.isEmpty {
            var s = c.channelGateSettings ?? [:]
            for kv in channelGateSets {
                guard let eq = kv.firstIndex(of: "="), eq != kv.startIndex else {
                    throw ValidationError("--channel-gate-set '\(kv)' is not KEY=VALUE (e.g. tau=0.001)")
                }
                s[String(kv[..<eq])] = String(kv[kv.index(after: eq)...])
            }
            c.channelGateSettings = s
        }
        if let v = epochs { c.epochs = v }
        if let v = lr { c.learningRate = v }
        if let v = archLr { c.archLearningRate = v }
        if let v = archWeightDecay { c.archWeightDecay = v }
        if let v = bnRecalibration {
            guard v >= 0 else { throw ValidationError("--bn-recalibration must be ≥ 0 batches") }
            c.bnRecalibrationBatches = v
        }
        if let v = seed { c.seed = v }
        if let text = memoryBudget {
            guard let b = parseBytes(text), b > 0 else { throw ValidationError("--memory-budget '\(text)' is not a size; write e.g. 512MiB or 1.5GiB") }
            c.memoryBudget = b
        }
        c.pluginDirs = dirs.pluginDirs
        return c
    }

    /// Checks the components against the loaded plugins and folds their settings into the config.
    func resolveComponents(_ c: inout SearchConfig, registry: PluginRegistry) throws {
        var request = try config.map { try SelectionRequest.load(file: $0) } ?? SelectionRequest()
        request = request.overridden(by: SelectionRequest(strategy: strategy, gate: gate, ops: ops.isEmpty ? nil : ops,
                                                          regularizers: regularizers.isEmpty ? nil : regularizers,
                                                          set: try SelectionRequest.settings(fromFlags: sets)))
        if request.strategy == nil { request.strategy = c.strategy }
        if request.gate == nil { request.gate = c.gate }
        if request.ops == nil { request.ops = c.space.ops }
        // Merged ops are selected like ops (so `--set NAME.covers=…` reaches them), then kept apart.
        let merged = Set(mergedOps)
        request.ops = (request.ops ?? []) + mergedOps
        let s = try Selection.resolve(request, registry: registry)
        c.strategy = s.strategy!.component.id
        c.strategySettings = s.strategy!.settings
        // --partial-channels and a strategy's own partial_channels parameter must agree.
        if let k = partialChannels, s.strategy!.component.params.contains(where: { $0.name == "partial_channels" }) {
            c.strategySettings["partial_channels"] = String(k)
        }
        c.gate = s.gate!.component.id
        c.gateSettings = s.gate!.settings
        c.space.ops = s.ops.map(\.component.id).filter { !merged.contains($0) }
        c.space.mergedOps = s.ops.map(\.component.id).filter { merged.contains($0) }
        c.opSettings = Dictionary(uniqueKeysWithValues: s.ops.filter { !$0.settings.isEmpty }.map { ($0.component.id, $0.settings) })
        c.regularizers = s.regularizers.map(\.component.id)
        c.regularizerSettings = Dictionary(uniqueKeysWithValues: s.regularizers.filter { !$0.settings.isEmpty }.map { ($0.component.id, $0.settings) })
        c.methods = s.methods.mapValues(\.name)
    }
}

func loadTrainingData(_ c: SearchConfig, accountant acc: MemoryAccountant, split: Dataset.Split = .train) throws -> Dataset {
    try acc.withOwner("dataset") {
        switch c.dataset {
        case "fashion-mnist", "fmnist":
            return try Dataset.fashionMNIST(folder: c.dataDir ?? Dataset.fashionMNISTFolder, split: split, accountant: acc)
        case "cifar10", "cifar-10":
            guard let dir = c.dataDir else { throw ValidationError("cifar10 needs --data-dir with the data_batch_*.bin files") }
            return try Dataset.cifar10(folder: dir, split: split, accountant: acc)
        case "synthetic":
            return try Dataset.synthetic(count: split == .train ? 4000 : 1000, channels: 1, height: 28, width: 28, classes: 10,
                                         seed: c.seed, split: split, accountant: acc)
        default:
            throw ValidationError("unknown dataset '\(c.dataset)'; choose fashion-mnist, cifar10 or synthetic")
        }
    }
}

func printPrediction(_ p: StepPrediction, config c: SearchConfig, datasetBytes: Int?) {
    print("predicted peak of the search, its costliest step over \(c.epochs) epoch(s) (batch \(c.batchSize), C=\(c.space.channels), \(c.space.cells) cells, \(c.space.ops.count) ops/edge): "
          + formatBytes(p.stepPeak) + (datasetBytes.map { " + dataset \(formatBytes($0))" } ?? ""))
    for cat in MemoryCategory.allCases where p.accountant.peakByCategory[cat] > 0 {
        var v = p.accountant.peakByCategory[cat]
        if cat == .data { v -= p.datasetBytes }
        if v > 0 { print("  " + pad(cat.name, 22) + formatBytes(v)) }
    }
    let top = p.accountant.peakByOwnerPrefix(depth: 2).filter { !$0.prefix.hasPrefix("dataset") }.prefix(6)
    print("  largest owners at the peak: " + top.map { "\($0.prefix) \(formatBytes($0.bytes.total))" }.joined(separator: ", "))
}

struct SearchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search",
        abstract: "Run an architecture search (DARTS by default) on Fashion-MNIST; with no arguments, a short one.")

    @OptionGroup var options: SearchOptions
    @Option(help: "Output folder (default runs/search-<time>).") var out: String?
    @Option(help: "Continue the search in this output folder from its checkpoint.") var resume: String?
    @Flag(help: "Only predict the peak memory of one step, then exit.") var dryRun = false

    func run() throws {
        let context = HostContext()
        var config: SearchConfig
        let outDir: String
        if let resume {
            config = try SearchRun.loadConfig(resume)
            outDir = resume
        } else {
            let shaped = [options.channels, options.cells, options.batchSize, options.epochs, options.trainImages].contains { $0 != nil }
                || options.config != nil
            config = try options.makeConfig(quickDefaults: !shaped)
            outDir = out ?? "runs/search-" + timestamp()
        }
        let registry = PluginLoader(context: context).load(PluginSearchPath.standard(extraDirectories: config.pluginDirs))
        for f in registry.failures { FileHandle.standardError.write(Data("warning: plugin \(f)\n".utf8)) }
        if resume == nil {
            do { try options.resolveComponents(&config, registry: registry) } catch { throw ValidationError("\(error)") }
        }
        try config.validate()

        let acc = MemoryAccountant()
        let train = try loadTrainingData(config, accountant: acc)
        var view = train.all
        if let n = config.trainImages { view = view.prefix(n) }
        let prediction = try SearchRun.predictRun(config: config, registry: registry, imageShape: (train.channels, train.height, train.width),
                                                  classes: train.numClasses)
        printPrediction(prediction, config: config, datasetBytes: train.byteCount)
        if let budget = config.memoryBudget {
            let need = prediction.stepPeak + train.byteCount
            if need > budget {
                let fits = BudgetPlanner.suggestions(for: config, registry: registry, imageShape: (train.channels, train.height, train.width),
                                                     classes: train.numClasses, datasetBytes: train.byteCount, budget: budget)
                throw ValidationError("the predicted peak \(formatBytes(need)) exceeds --memory-budget \(formatBytes(budget)) by \(formatBytes(need - budget)). "
                                      + (fits.isEmpty ? "Nothing that changes one of --batch-size, --partial-channels, --cells or --channels alone fits; raise the budget"
                                                      : "Each of these fits: " + fits.map(\.description).joined(separator: "; ")))
            }
            acc.budget = budget
        }
        if dryRun { return }

        if resume == nil { try SearchRun.prepareOutput(outDir, config: config) }
        context.begin(accountant: acc, seed: config.seed)
        let run = try SearchRun(config: config, registry: registry, context: context, train: view, outDirectory: outDir)
        if resume != nil {
            try run.resume(from: outDir)
            print("resuming \(outDir) at epoch \(run.epoch + 1), step \(run.globalStep)")
        }
        print("search: \(config.strategy) with \(config.gate)" + (config.regularizers.isEmpty ? "" : " + " + config.regularizers.joined(separator: " + "))
              + (run.config.space.partialChannels > 1 ? ", partial channels K=\(run.config.space.partialChannels)" : "")
              + (run.config.space.mergedOps.isEmpty ? "" : ", merged \(run.config.space.mergedOps.joined(separator: ", "))") + "; \(config.space.ops.count) ops per edge, C=\(config.space.channels), "
              + "\(config.space.cells) cells, \(view.count) images (half for weights, half for α), batch \(config.batchSize), "
              + "\(config.epochs) epochs, \(run.supernet.weightCount) weights; output \(outDir)")
        signal(SIGINT) { _ in searchInterruptRequested = 1 }
        let bar = SearchProgressBar(epochs: config.epochs)
        do { try run.run(progress: bar) } catch let e as SearchInterrupted {
            print("\n\(e)")
            print("resume with: espalier search --resume \(outDir)")
            throw ExitCode(130)
        }
        let genotype = try run.derive()
        print("genotype: \(genotype.jsonText())")
        var network = NetworkDescription(genotype: genotype)
        network.channels = config.space.channels; network.cells = genotype.perCell?.count ?? config.space.cells
        if let why = network.deadEnd {
            print("warning: the found network's output cannot depend on its input: \(why). "
                  + "Search again with a smaller cost weight (FiGS's λ, GSparsity's μ), or for longer.")
        }
        print("written: \((outDir as NSString).appendingPathComponent("genotype.json")), log.jsonl, checkpoint.safetensors, pictures: "
              + ["genotype_normal", "genotype_reduce"].map { name -> String in
                  let svg = (outDir as NSString).appendingPathComponent(name + ".svg")
                  return FileManager.default.fileExists(atPath: svg) ? svg : (outDir as NSString).appendingPathComponent(name + ".dot")
              }.joined(separator: ", "))
        print("train it: espalier train --genotype \((outDir as NSString).appendingPathComponent("genotype.json"))")
        if run.supernet.hyperConnected {
            // The genotype above is the DARTS rule on the first cell of each type; the searched network is the pruned one.
            let pruned = try run.prunedArchitecture(), path = (outDir as NSString).appendingPathComponent("pruned.json")
            print("pruned network (every cell its own): \(pruned.space.cells) cells, \(pruned.opCount) ops on edges, \(pruned.inputCount) inter-cell inputs; "
                  + "per cell ops/inputs: " + zip(pruned.ops, pruned.inputs).map { "\($0.reduce(0) { $0 + $1.count })/\($1.count)" }.joined(separator: " "))
            print("written: \(path); train it: espalier train-pruned --pruned \(path)")
        }
    }
}

struct MemoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "memory", abstract: "Predict the peak memory of one search step (search --dry-run).")
    @OptionGroup var options: SearchOptions

    func run() throws {
        var config = try options.makeConfig(quickDefaults: false)
        let context = HostContext()
        let registry = PluginLoader(context: context).load(PluginSearchPath.standard(extraDirectories: config.pluginDirs))
        do { try options.resolveComponents(&config, registry: registry) } catch { throw ValidationError("\(error)") }
        try config.validate()
        let shape: (Int, Int, Int) = config.dataset.hasPrefix("cifar") ? (3, 32, 32) : (1, 28, 28)
        let p = try SearchRun.predictRun(config: config, registry: registry, imageShape: shape, classes: 10)
        printPrediction(p, config: config, datasetBytes: nil)
        if let b = config.memoryBudget {
            print(p.stepPeak <= b ? "fits --memory-budget \(formatBytes(b)) with \(formatBytes(b - p.stepPeak)) to spare (plus the dataset)"
                                  : "does NOT fit --memory-budget \(formatBytes(b)): over by \(formatBytes(p.stepPeak - b))")
            if p.stepPeak > b {
                let fits = BudgetPlanner.suggestions(for: config, registry: registry, imageShape: shape, classes: 10, datasetBytes: 0, budget: b)
                print(fits.isEmpty ? "  nothing that changes one of --batch-size, --partial-channels, --cells or --channels alone fits"
                                   : "  each of these fits: " + fits.map(\.description).joined(separator: "; "))
            }
        }
    }
}

final class SearchProgressBar: SearchProgress {
    let bar: ProgressBar
    init(epochs: Int) {
        bar = ProgressBar(label: "search") { _ in "" }
        self.epochs = epochs
    }
    let epochs: Int
    func step(_ done: Int, of total: Int, loss: Double, accuracy: Double) { bar.step(done, of: total, loss: loss, accuracy: accuracy) }
    func epochDone(_ l: SearchEpochLog) {
        print(String(format: "epoch %d/%d  train loss %.4f acc %.2f%%  valid loss %.4f acc %.2f%%  lr %.4f  %.1fs (median step %.2fs)  peak %@",
                     l.epoch, epochs, l.trainLoss, l.trainAccuracy * 100, l.validLoss, l.validAccuracy * 100, l.learningRate, l.seconds,
                     l.medianStepSeconds, formatBytes(l.peakBytes) as NSString))
        print("  genotype: normal \(l.genotype.normal.map(\.description).joined(separator: " ")) | reduce \(l.genotype.reduce.map(\.description).joined(separator: " "))")
        fflush(stdout)
    }
}

func timestamp() -> String {
    let f = DateFormatter()
    f.dateFormat = "yyyyMMdd-HHmmss"
    f.locale = Locale(identifier: "en_US_POSIX")
    return f.string(from: Date())
}
