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
    @OptionGroup var selection: SelectionFlags
    @Option(name: .customLong("channel-gate-set"), help: "KEY=VALUE setting of the channel gate, e.g. tau=0.001 (repeatable).") var channelGateSets: [String] = []

    @Option(help: ArgumentHelp(datasetHelp)) var dataset: String?
    @Option(help: "Dataset folder (an .npz file for --dataset npz).") var dataDir: String?
    @OptionGroup var data: DataOptions
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
    @Option(help: "Ghost batch norm: normalise each batch in N slices, as N ranks normalise their shares (to check N ranks against one process; also for large batches).")
    var bnGroups: Int?
    @Option(help: "Predict the peak of one rank of a search on N ranks (dry run and `memory`, without mpirun; under mpirun the rank count is mpirun's).")
    var ranks: Int?
    @Option(help: ArgumentHelp("Memory budget, e.g. 1.5GiB: refused before the run if the prediction exceeds it, never exceeded during it.",
                               discussion: "It covers every tensor the accountant counts (parameters, gradients, optimiser state, activations, "
                                   + "workspace, the dataset); the process's own code, libraries and allocator overhead are not in it, so the "
                                   + "peak RSS is higher (the run's memory.csv reports that remainder)."))
    var memoryBudget: String?
    @Option(help: ArgumentHelp("What backward recomputes instead of keeping: none, ops, edges, cells or auto (the fewest cells that make --memory-budget fit).",
                               discussion: "ops: each candidate op keeps its input and output only; edges: the mixed edges into each node, with the node's sum; "
                                   + "cells: each cell keeps its inputs and output only. Results are bit-identical to none; the price is one more forward of "
                                   + "what is recomputed (`espalier memory` shows each level's peak and extra compute). Also `recompute` in a --config file."))
    var recompute: String?
    @Option(help: "Worker threads for the kernels (default: the core count; also ESPALIER_THREADS).") var threads: Int?

    /// The flags given on this command line that set something of the search itself (all but
    /// plugin folders, the budget and threads): `--resume` refuses them, since the run continues
    /// with its own config.json.
    var searchDefiningFlags: [String] {
        let given: [(String, Bool)] = selection.given + [
            ("--channel-gate-set", !channelGateSets.isEmpty), ("--dataset", dataset != nil), ("--data-dir", dataDir != nil),
            ("--train-images", trainImages != nil), ("--eval-images", evalImages != nil), ("--channels", channels != nil),
            ("--cells", cells != nil), ("--nodes", nodes != nil), ("--batch-size", batchSize != nil),
            ("--partial-channels", partialChannels != nil), ("--hyper-connected", hyperConnected), ("--aggregator", aggregator != nil),
            ("--epochs", epochs != nil), ("--lr", lr != nil), ("--arch-lr", archLr != nil), ("--arch-weight-decay", archWeightDecay != nil),
            ("--bn-recalibration", bnRecalibration != nil), ("--seed", seed != nil), ("--bn-groups", bnGroups != nil),
        ]
        return given.filter(\.1).map(\.0) + data.givenFlags
    }

    /// `--memory-budget` in bytes (nil when not given).
    func parsedBudget() throws -> Int? {
        guard let text = memoryBudget else { return nil }
        guard let b = parseBytes(text), b > 0 else { throw ValidationError("--memory-budget '\(text)' is not a size; write e.g. 512MiB or 1.5GiB") }
        return b
    }

    /// Applies `--threads` (before any kernel runs: the worker pool reads it once).
    func applyThreads() throws {
        guard let n = threads else { return }
        guard n >= 1 else { throw ValidationError("--threads must be at least 1 (got \(n))") }
        setenv("ESPALIER_THREADS", String(n), 1)
    }

    /// The config: DARTS defaults (or the short quick search when nothing shapes the run), then flags.
    func makeConfig(quickDefaults: Bool) throws -> SearchConfig {
        var c = quickDefaults ? SearchConfig.quick : SearchConfig()
        if let v = dataset { c.dataset = v }
        if let v = dataDir { c.dataDir = v }
        try data.apply(to: &c)
        if let v = trainImages {
            guard v > 0 else { throw ValidationError("--train-images must be a positive number of images (got \(v)); leave it out to use them all") }
            c.trainImages = v
        }
        if let v = evalImages {
            guard v > 0 else { throw ValidationError("--eval-images must be a positive number of images (got \(v)); leave it out to score the whole validation half") }
            c.evalImages = v
        }
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
        if let v = bnGroups {
            guard v >= 1 else { throw ValidationError("--bn-groups must be at least 1 (got \(v))") }
            c.bnGroups = v
        }
        if let v = ranks, v < 1 { throw ValidationError("--ranks must be at least 1 (got \(v))") }
        if let b = try parsedBudget() { c.memoryBudget = b }
        c.pluginDirs = absolutePaths(dirs.pluginDirs)
        try applyRecompute(to: &c)
        return c
    }

    /// `--recompute`, else the config file's `recompute` (an `auto` choice is made anew: it depends on the budget).
    func applyRecompute(to c: inout SearchConfig) throws {
        if let text = try recompute ?? selection.fileRecompute() {
            do { c.recompute = try RecomputeMode(parsing: text, what: recompute != nil ? "--recompute" : "the config file's recompute") } catch {
                throw ValidationError("\(error)")
            }
        }
        c.recomputeSegments = nil
    }

    /// Checks the components against the loaded plugins and folds their settings into the config.
    func resolveComponents(_ c: inout SearchConfig, registry: PluginRegistry) throws {
        let (resolution, s) = try selection.resolve(registry, defaults: (c.strategy, c.gate, c.space.ops), channelGate: c.channelGate)
        let merged = Set(resolution.mergedOps)
        c.channelGate = resolution.channelGate
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
        // By instance key: a regularizer selected twice keeps two sets of settings (id, id#2).
        c.regularizerSettings = Dictionary(uniqueKeysWithValues: s.regularizers.filter { !$0.settings.isEmpty }.map { ($0.instanceKey, $0.settings) })
        c.methods = s.methods.mapValues(\.name)
        c.method = resolution.method?.name
    }
}

/// The components and settings a search resolved to, on one line (a dry run prints it first).
func selectionLine(_ c: SearchConfig) -> String {
    func settings(_ s: [String: String]?) -> String {
        guard let s, !s.isEmpty else { return "" }
        return " {" + s.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ") + "}"
    }
    var parts = c.method.map { ["method \($0)"] } ?? []
    parts += ["strategy \(c.strategy)\(settings(c.strategySettings))", "gate \(c.gate)\(settings(c.gateSettings))"]
    if let g = c.channelGate { parts.append("channel gate \(g)\(settings(c.channelGateSettings))") }
    parts.append("ops " + c.space.ops.map { $0 + settings(c.opSettings[$0]) }.joined(separator: " "))
    if !c.space.mergedOps.isEmpty { parts.append("merged ops " + c.space.mergedOps.map { $0 + settings(c.opSettings[$0]) }.joined(separator: " ")) }
    let keys = Selection.instanceKeys(c.regularizers)
    if !keys.isEmpty { parts.append("regularizers " + keys.map { $0 + settings(c.regularizerSettings[$0]) }.joined(separator: " ")) }
    if !c.methods.isEmpty { parts.append("methods " + c.methods.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")) }
    return "selection: " + parts.joined(separator: "; ")
}

/// Paths made absolute against the current folder, so a run resumed from elsewhere finds them.
func absolutePaths(_ paths: [String]) -> [String] {
    let cwd = FileManager.default.currentDirectoryPath
    return paths.map { $0.hasPrefix("/") ? $0 : URL(fileURLWithPath: $0, relativeTo: URL(fileURLWithPath: cwd, isDirectory: true)).standardizedFileURL.path }
}

func printPrediction(_ p: StepPrediction, config c: SearchConfig, datasetBytes: Int?, ranks: Int = 1) {
    print("predicted peak of the search\(ranks > 1 ? " per rank on \(ranks) ranks" : ""), its costliest step over \(c.epochs) epoch(s) (batch \(c.batchSize)\(ranks > 1 ? " shared by the ranks" : ""), C=\(c.space.channels), \(c.space.cells) cells, \(c.space.ops.count) ops/edge\(c.recomputeText.map { ", " + $0 } ?? "")): "
          + formatBytes(p.stepPeak) + (datasetBytes.map { " + dataset \(formatBytes($0))" } ?? "") + " (\(p.stepPeak + (datasetBytes ?? 0)) bytes in all)")
    for cat in MemoryCategory.allCases where p.accountant.peakByCategory[cat] > 0 {
        var v = p.accountant.peakByCategory[cat]
        if cat == .data { v -= p.datasetBytes }
        if v > 0 { print("  " + pad(cat.name, 22) + formatBytes(v)) }
    }
    if p.drawMargin > 0 { print("  " + pad("sampled draws", 22) + formatBytes(p.drawMargin) + " (the most a draw holds above the dry run's, on one edge)") }
    let top = p.accountant.peakByOwnerPrefix(depth: 2).filter { !$0.prefix.hasPrefix("dataset") }.prefix(6)
    print("  largest owners at the peak: " + top.map { "\($0.prefix) \(formatBytes($0.bytes.total))" }.joined(separator: ", "))
}

struct SearchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search",
        abstract: "Run an architecture search (DARTS by default) on Fashion-MNIST; with no arguments, a short one.")

    @OptionGroup var options: SearchOptions
    @Option(help: "Output folder (default runs/search-<time>): a new or empty folder; a folder holding anything else is refused, never touched.")
    var out: String?
    @Option(help: ArgumentHelp("Continue the search in this output folder from its checkpoint.",
                               discussion: "The run continues with its own config.json; only --plugin-dir, --memory-budget, --recompute and --threads may "
                                   + "be given with it (they replace the saved ones; recomputation changes no result); any other setting is refused."))
    var resume: String?
    @Flag(help: "With --resume: start the search in that folder over from its config.json when it holds no checkpoint yet.") var restart = false
    @Flag(help: "Only predict the peak memory of one step, then exit.") var dryRun = false

    @Flag(help: "Run the search in this process instead of a supervised worker process (also ESPALIER_SUPERVISE=0).") var noSupervise = false

    func run() throws {
        try options.applyThreads()
        // Supervised: the work runs in a worker process that a crashing plugin may take down; this
        // process reports it (Supervisor.swift). The worker gets the output folder chosen here.
        // Under mpirun the supervisor never starts MPI: the worker does (Ranks.swift).
        if Supervisor.enabled && !noSupervise && !dryRun {
            let folder = resume ?? out ?? "runs/search-" + timestamp()
            try Supervisor.run(extraArguments: resume == nil && out == nil ? ["--out", folder] : [], outDir: folder)
        }
        if Supervisor.isWorker { Supervisor.attachWorker() }
        // A dry run only predicts: under mpirun each rank predicts its own peak, without MPI.
        let ranks: Communicator = dryRun ? SingleProcess() : try RankRuntime.start()
        if dryRun, let p = RankRuntime.place, p.rank > 0 { _ = freopen("/dev/null", "w", stdout) }   // one copy of the prediction
        try RankRuntime.run(ranks) { try search(ranks: ranks) }
    }

    /// The search on `ranks` (every rank runs this; rank 0 alone touches the output folder).
    func search(ranks: Communicator) throws {
        let place: (rank: Int, size: Int) = dryRun ? (RankRuntime.place ?? (0, 1)) : (ranks.rank, ranks.size)
        if !dryRun && options.ranks != nil {
            throw ValidationError("--ranks N only predicts (with --dry-run, or espalier memory); to search on N ranks, start it with mpirun -np N espalier search …")
        }
        if place.size > 1 && options.ranks != nil {
            throw ValidationError("--ranks predicts a run on N ranks without mpirun; under mpirun the rank count is mpirun's (-np \(place.size))")
        }
        let rankCount = options.ranks ?? place.size
        let context = HostContext()
        var config: SearchConfig
        let outDir: String
        var resumeLock: RunFolderLock?
        if let resume {
            let refused = options.searchDefiningFlags + (out != nil ? ["--out"] : [])
            guard refused.isEmpty else {
                throw ValidationError("--resume continues \(resume) with its own config.json, so \(refused.joined(separator: ", ")) cannot be given with it. "
                                      + "With --resume only --plugin-dir, --memory-budget, --recompute and --threads may change; to change anything else, start a new search (--out NEW)")
            }
            config = try ranks.onRoot {
                try RunFolder.checkResumable(resume)
                resumeLock = try RunFolderLock.acquire(resume, create: false)
                return try SearchRun.loadConfig(resume)
            }
            if !options.dirs.pluginDirs.isEmpty { config.pluginDirs = absolutePaths(options.dirs.pluginDirs) }
            if let b = try options.parsedBudget() { config.memoryBudget = b }
            if options.recompute != nil { try options.applyRecompute(to: &config) }
            if config.recompute == .auto { config.recomputeSegments = nil }   // chosen anew for this budget
            outDir = resume
        } else {
            guard !restart else { throw ValidationError("--restart goes with --resume DIR (it starts that search over from its config.json)") }
            let shaped = [options.channels, options.cells, options.batchSize, options.epochs, options.trainImages].contains { $0 != nil }
                || options.selection.config != nil
            config = try options.makeConfig(quickDefaults: !shaped)
            outDir = out ?? "runs/search-" + timestamp()
            if !dryRun { try ranks.onRoot { try RunFolder.checkNew(outDir); return true } }
        }
        let registry = PluginLoader(context: context).load(PluginSearchPath.standard(extraDirectories: config.pluginDirs))
        if ranks.isRoot {
            for f in registry.failures { FileHandle.standardError.write(Data("warning: plugin \(f)\n".utf8)) }
            reportWarnings(registry)
        }
        if resume == nil {
            do { try options.resolveComponents(&config, registry: registry) } catch { throw ValidationError("\(error)") }
        }
        try config.validate()
        if dryRun && ranks.isRoot { print(selectionLine(config)) }

        let acc = MemoryAccountant()
        let train = try loadTrainingData(config, accountant: acc)
        // Recorded in config.json: what the labels mean and the statistics batches are normalised with.
        config.classNames = train.classNames
        config.normalization = DataStatistics(of: train)
        var view = train.all
        if let n = config.trainImages { view = view.prefix(n) }
        let shape = (train.channels, train.height, train.width)
        if config.recompute == .auto {
            let problem = RecomputePlanner.Problem(config: config, registry: registry, imageShape: shape, classes: train.numClasses,
                                                   datasetBytes: train.byteCount, ranks: (rankCount - 1, rankCount))
            config.recomputeSegments = try chooseRecomputedSegments(problem, print: ranks.isRoot)
        }
        // Per rank: the last rank holds the largest share of every batch, so its peak bounds every rank's.
        let prediction = try SearchRun.predictRun(config: config, registry: registry, imageShape: shape, classes: train.numClasses,
                                                  ranks: (rankCount - 1, rankCount))
        printPrediction(prediction, config: config, datasetBytes: train.byteCount, ranks: rankCount)
        if rankCount > 1 && ranks.isRoot {
            try printPerRankPredictions(config: config, registry: registry, imageShape: shape, classes: train.numClasses,
                                        datasetBytes: train.byteCount, ranks: rankCount)
        }
        if let budget = config.memoryBudget {
            let need = prediction.stepPeak + train.byteCount
            if need > budget {
                let fits = BudgetPlanner.suggestions(for: config, registry: registry, imageShape: shape, classes: train.numClasses,
                                                     datasetBytes: train.byteCount, budget: budget, ranks: rankCount)
                throw ValidationError("the predicted peak \(formatBytes(need))\(rankCount > 1 ? " per rank" : "") exceeds --memory-budget \(formatBytes(budget)) by \(formatBytes(need - budget)). "
                                      + (fits.isEmpty ? "Nothing that changes one of --recompute, --batch-size, --partial-channels, --cells, --channels or the rank count alone fits; raise the budget"
                                                      : "Each of these fits: " + fits.map(\.description).joined(separator: "; ")))
            }
            acc.budget = budget
        }
        if dryRun { return }

        // The folder's lock for the rest of the process: no second search writes into it meanwhile.
        let lock: RunFolderLock? = try ranks.isRoot ? (resumeLock ?? RunFolderLock.acquire(outDir, create: true)) : nil
        defer { withExtendedLifetime(lock) {} }
        try ranks.onRoot { () -> Bool in
            if resume == nil {
                do { try SearchRun.prepareOutput(outDir, config: config) } catch { lock?.release(remove: true); throw error }
            } else {
                try SearchRun.saveConfig(config, in: outDir)   // the plugin folders and budget it now runs with
            }
            return true
        }
        context.begin(accountant: acc, seed: config.seed)
        let run = try SearchRun(config: config, registry: registry, context: context, train: view,
                                outDirectory: ranks.isRoot ? outDir : nil, ranks: ranks)
        if let k = ProcessInfo.processInfo.environment["ESPALIER_STOP_AFTER_STEPS"].flatMap(Int.init), k > 0 { run.stopAfterSteps = k }
        if resume != nil {
            try run.resume(from: outDir, restart: restart)
            print(run.globalStep == 0 ? "starting \(outDir) over from its config.json" : "resuming \(outDir) at epoch \(run.epoch + 1), step \(run.globalStep)")
        }
        print("search: \(config.strategy) with \(config.gate)" + (config.regularizers.isEmpty ? "" : " + " + config.regularizers.joined(separator: " + "))
              + (run.config.space.partialChannels > 1 ? ", partial channels K=\(run.config.space.partialChannels)" : "")
              + (run.config.space.mergedOps.isEmpty ? "" : ", merged \(run.config.space.mergedOps.joined(separator: ", "))") + "; \(config.space.ops.count) ops per edge, C=\(config.space.channels), "
              + "\(config.space.cells) cells, \(view.count) images (half for weights, half for α), batch \(config.batchSize), "
              + "\(config.epochs) epochs, \(run.supernet.weightCount) weights; output \(outDir)")
        if ranks.isDistributed {
            print("ranks: \(ranks.size) (\(ranks.transport)); each holds its share of every batch of \(config.batchSize) "
                  + "(\(Shards.range(part: 0, of: ranks.size, count: config.batchSize).count) to \(Shards.range(part: ranks.size - 1, of: ranks.size, count: config.batchSize).count) images)"
                  + ((config.bnGroups ?? 1) > 1 ? ", in \(config.bnGroups!) batch-norm groups" : "")
                  + "; \(run.exchangeFloats) floats summed per gradient exchange; rank 0 writes \(outDir)")
        }
        // SIGUSR1 too: mpirun passes it on to every rank (a Ctrl-C at mpirun ends the job at once).
        signal(SIGINT) { _ in searchInterruptRequested = 1 }
        signal(SIGUSR1) { _ in searchInterruptRequested = 1 }
        let bar = SearchProgressBar(epochs: config.epochs)
        do { try run.run(progress: ranks.isRoot ? bar : nil) } catch let e as SearchInterrupted {
            try run.writeRankReport(predictedPeak: rankReportPrediction(run, registry: registry, shape: shape, classes: train.numClasses))
            print("\n\(e)")
            print("resume with: espalier search --resume \(outDir)")
            throw ExitCode(130)
        } catch let e as SearchDiverged {
            print("")
            if ranks.isRoot { FileHandle.standardError.write(Data("Error: \(e)\n".utf8)) }
            throw ExitCode(65)
        }
        try run.writeRankReport(predictedPeak: rankReportPrediction(run, registry: registry, shape: shape, classes: train.numClasses))
        guard ranks.isRoot else { return }
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
        print("watch it: tensorboard --logdir \((outDir as NSString).appendingPathComponent(SearchRun.tensorBoardFolder))")
        if run.supernet.hyperConnected {
            // The genotype above is the DARTS rule on the first cell of each type; the searched network is the pruned one.
            let pruned = try run.prunedArchitecture(), path = (outDir as NSString).appendingPathComponent("pruned.json")
            print("pruned network (every cell its own): \(pruned.space.cells) cells, \(pruned.opCount) ops on edges, \(pruned.inputCount) inter-cell inputs; "
                  + "per cell ops/inputs: " + zip(pruned.ops, pruned.inputs).map { "\($0.reduce(0) { $0 + $1.count })/\($1.count)" }.joined(separator: " "))
            print("written: \(path); train it: espalier train-pruned --pruned \(path)")
        }
    }

    /// This rank's own predicted peak (with the dataset) for ranks.json; nil in one process.
    func rankReportPrediction(_ run: SearchRun, registry: PluginRegistry, shape: (Int, Int, Int), classes: Int) -> Int? {
        guard run.ranks.isDistributed else { return nil }
        return (try? SearchRun.predictRun(config: run.config, registry: registry, imageShape: shape, classes: classes,
                                          ranks: (run.ranks.rank, run.ranks.size))).map { $0.stepPeak + run.trainLoader.view.dataset.byteCount }
    }
}

/// `--recompute auto`: the segments the planner recomputes to fit `--memory-budget` (none without a
/// budget, or when the search fits as it is), said on stdout; refused before anything runs when even
/// the most recomputation does not fit, with the least it needs.
func chooseRecomputedSegments(_ p: RecomputePlanner.Problem, print say: Bool) throws -> [String] {
    guard let budget = p.config.memoryBudget else {
        if say { print("recompute auto: no --memory-budget, so nothing is recomputed") }
        return []
    }
    guard let choice = try RecomputePlanner.choose(p, budget: budget) else {
        let least = try RecomputePlanner.smallest(p)
        let fits = BudgetPlanner.suggestions(for: p.config, registry: p.registry, imageShape: p.imageShape, classes: p.classes,
                                             datasetBytes: p.datasetBytes, budget: budget, ranks: p.ranks.size)
        throw ValidationError("--memory-budget \(formatBytes(budget)) is below what this search needs even with the most recomputation: "
                              + "\(least.flag) predicts \(formatBytes(least.predicted)), the least it can run in as it is. Raise --memory-budget to at least that"
                              + (fits.isEmpty ? "." : ", or change the search; each of these fits: " + fits.map(\.description).joined(separator: "; ")))
    }
    let segments = choice.segments ?? []
    if say {
        print(segments.isEmpty ? "recompute auto: the search fits --memory-budget \(formatBytes(budget)) as it is; nothing is recomputed"
              : "recompute auto: \(RecomputeFigure.list(segments)) recomputed in backward (the most bytes freed per FLOP first): "
                + "predicted \(formatBytes(choice.predicted)) under --memory-budget \(formatBytes(budget)), about \(choice.extraPercent)")
    }
    return segments
}

/// Each rank's predicted peak when the ranks' shares differ (⌊B/N⌋ or ⌈B/N⌉ of a batch of B).
func printPerRankPredictions(config: SearchConfig, registry: PluginRegistry, imageShape: (Int, Int, Int), classes: Int,
                             datasetBytes: Int, ranks n: Int) throws {
    var byShare: [Int: Int] = [:]
    var lines: [String] = []
    for r in 0..<n {
        let share = Shards.range(part: r, of: n, count: config.batchSize).count
        if byShare[share] == nil {
            byShare[share] = try SearchRun.predictRun(config: config, registry: registry, imageShape: imageShape, classes: classes,
                                                      ranks: (r, n)).stepPeak + datasetBytes
        }
    }
    for (share, bytes) in byShare.sorted(by: { $0.key < $1.key }) {
        let which = (0..<n).filter { Shards.range(part: $0, of: n, count: config.batchSize).count == share }
        lines.append("  rank\(which.count == 1 ? "" : "s") \(which.count > 4 ? "\(which.first!)…\(which.last!) (\(which.count))" : which.map(String.init).joined(separator: ", ")): "
                     + "\(share) images of each batch, peak \(formatBytes(bytes)) with the dataset")
    }
    print("per rank (the budget applies to each rank; each rank loads the whole dataset):")
    lines.forEach { print($0) }
}

struct MemoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "memory", abstract: "Predict the peak memory of one search step (search --dry-run).")
    @OptionGroup var options: SearchOptions

    func run() throws {
        try options.applyThreads()
        var config = try options.makeConfig(quickDefaults: false)
        let context = HostContext()
        let registry = PluginLoader(context: context).load(PluginSearchPath.standard(extraDirectories: config.pluginDirs))
        reportWarnings(registry)
        do { try options.resolveComponents(&config, registry: registry) } catch { throw ValidationError("\(error)") }
        try config.validate()
        print(selectionLine(config))
        let (shape, classes) = try predictionShape(config)
        let n = options.ranks ?? 1
        let problem = RecomputePlanner.Problem(config: config, registry: registry, imageShape: shape, classes: classes, datasetBytes: 0, ranks: (n - 1, n))
        if config.recompute == .auto { config.recomputeSegments = try chooseRecomputedSegments(problem, print: true) }
        let p = try SearchRun.predictRun(config: config, registry: registry, imageShape: shape, classes: classes, ranks: (n - 1, n))
        printPrediction(p, config: config, datasetBytes: nil, ranks: n)
        print("with and without recomputation (--recompute; bit-identical results, the price is a forward more of what is recomputed):")
        for f in try RecomputePlanner.levels(problem) {
            print("  " + pad(f.mode.rawValue, 7) + pad(formatBytes(f.predicted), 12) + (f.mode == .none ? "" : f.extraPercent))
        }
        // What auto would recompute under a budget the search exceeds is the planner's first suggestion below.
        if let b = config.memoryBudget, config.recompute != .auto, p.stepPeak <= b {
            print("  auto under --memory-budget \(formatBytes(b)): recomputes nothing (it fits as it is)")
        }
        if n > 1 { try printPerRankPredictions(config: config, registry: registry, imageShape: shape, classes: classes, datasetBytes: 0, ranks: n) }
        if let b = config.memoryBudget {
            print(p.stepPeak <= b ? "fits --memory-budget \(formatBytes(b)) with \(formatBytes(b - p.stepPeak)) to spare (plus the dataset)"
                                  : "does NOT fit --memory-budget \(formatBytes(b)): over by \(formatBytes(p.stepPeak - b))")
            if p.stepPeak > b {
                let fits = BudgetPlanner.suggestions(for: config, registry: registry, imageShape: shape, classes: classes, datasetBytes: 0, budget: b, ranks: n)
                print(fits.isEmpty ? "  nothing that changes one of --recompute, --batch-size, --partial-channels, --cells, --channels or the rank count alone fits"
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
        if let line = SearchProgressBar.termsLine(l) { print(line) }
        print("  genotype: normal \(l.genotype.normal.map(\.description).joined(separator: " ")) | reduce \(l.genotype.reduce.map(\.description).joined(separator: " "))")
        fflush(stdout)
    }
}

extension SearchProgressBar {
    /// "  arch loss 1.0986  terms: beta-decay 0.0123, …" (each regularizer by short name, #n when repeated), or nil.
    static func termsLine(_ l: SearchEpochLog) -> String? {
        let all = l.regularizerTerms ?? [:]
        let terms = all.sorted { $0.key < $1.key }.map { key, v -> String in
            let parts = key.split(separator: "#", maxSplits: 1).map(String.init)
            // id → short name; a repeated one (id and id#2, …) with its occurrence.
            let n = parts.count == 2 ? "#" + parts[1] : all[key + "#2"] != nil ? "#1" : ""
            return Component.shortName(parts[0]) + n + " " + String(format: "%.4g", v)
        }
        guard l.archLoss != nil || !terms.isEmpty else { return nil }
        return "  " + [l.archLoss.map { String(format: "arch loss %.4f", $0) }, terms.isEmpty ? nil : "terms: " + terms.joined(separator: ", ")]
            .compactMap { $0 }.joined(separator: "  ")
    }
}

func timestamp() -> String {
    let f = DateFormatter()
    f.dateFormat = "yyyyMMdd-HHmmss"
    f.locale = Locale(identifier: "en_US_POSIX")
    return f.string(from: Date())
}
