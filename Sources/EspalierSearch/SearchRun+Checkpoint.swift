// What a search run writes: OUT/config.json (once), OUT/log.jsonl (a line per epoch),
// OUT/checkpoint.safetensors (every epoch and on interrupt, atomically: weights, α, batch-norm
// statistics, optimiser state, and in its metadata the loop position, loader and RNG states and
// the plugins' own state blobs — ABI 1.3 save_state of the strategy and the regularizers, base64),
// and at the end OUT/genotype.json with pictures of the cells. Resuming reads them back; a
// checkpoint written before the blobs existed still resumes (the plugins then start fresh).

import EspalierCore
import EspalierHost
import Foundation

struct CheckpointState: Codable {
    var epoch: Int
    var globalStep: Int
    var stepInEpoch: Int
    var lossSum: Double
    var correct: Int
    var seen: Int
    var stepTimes: [Double]
    var trainLoader: DataLoader.State
    var validLoader: DataLoader.State
    var graphRNG: RNG
    var contextRNG: RNG
    var sgdSteps: Int
    var adamSteps: Int
    var learningRate: Float
    var peakBytes: Int
    var values: [String: Double]
    /// Candidate states, (edges × ops) flattened, for the normal and the reduction cells.
    var opStatesNormal: [Int32]
    var opStatesReduce: [Int32]
    /// The supernet's cell count (P-DARTS grows it); nil in checkpoints of fixed-depth runs.
    var cells: Int?
    /// Hyper-connected: candidate states per cell, inter-cell input states per cell, and the
    /// auxiliary heads the growth left (nil elsewhere).
    var slotStates: [[Int32]]? = nil
    var inputStates: [[Int32]]? = nil
    var auxiliaryCells: [Int]? = nil
    /// The plugins' own state (ABI 1.3 save_state), base64, by `pluginStateKey`; nil in older
    /// checkpoints and for plugins that keep none.
    var pluginStates: [String: String]? = nil
    /// The epoch's running sums for its log line (architecture loss; each regularizer's term, in
    /// selection order), so a mid-epoch resume logs the whole epoch's means; nil in older checkpoints.
    var archLossSum: Double? = nil, archLossCount: Int? = nil
    var regularizerTermSums: [Double]? = nil, regularizerTermCounts: [Int]? = nil
}

extension SearchRun {
    static let checkpointName = "checkpoint.safetensors"

    /// Every tensor of the run's state by a stable name.
    var stateTensors: [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        for p in weightOptimizer.parameters { out.append(("weights/" + p.name, p.value)) }
        for p in supernet.archParameters { out.append(("arch/" + p.name, p.value)) }
        for (i, b) in supernet.buffers.enumerated() { out.append((String(format: "buffers/%05d", i), b)) }
        for (i, p) in weightOptimizer.parameters.enumerated() { if let b = weightOptimizer.buffers[i] { out.append(("sgd/" + p.name, b)) } }
        let adam = archOptimizer.stateTensors, n = supernet.archParameters.count
        for (i, p) in supernet.archParameters.enumerated() {
            out.append(("adam/m/" + p.name, adam[i]))
            out.append(("adam/v/" + p.name, adam[n + i]))
        }
        return out
    }

    /// Writes the checkpoint atomically; returns its path (nil without an output folder).
    @discardableResult
    /// On several ranks every rank calls it (it is collective: the statistics are averaged and the
    /// states compared first, `agreeOnState`); rank 0 alone writes.
    public func checkpoint() throws -> String? {
        guard !accountant.isDryRun else { return nil }
        try agreeOnState()
        let askedForRankFiles = ProcessInfo.processInfo.environment["ESPALIER_RANK_CHECKPOINTS"] != nil
        guard outDirectory != nil || askedForRankFiles else { return nil }
        let st = CheckpointState(epoch: epoch, globalStep: globalStep, stepInEpoch: position.tally.stepInEpoch, lossSum: position.tally.lossSum,
                                 correct: position.tally.correct, seen: position.tally.seen,
                                 stepTimes: position.tally.stepTimes, trainLoader: trainLoader.state, validLoader: validLoader.state,
                                 graphRNG: graph.rng, contextRNG: context.rng, sgdSteps: weightOptimizer.stepCount,
                                 adamSteps: archOptimizer.stepCount, learningRate: weightOptimizer.learningRate, peakBytes: accountant.peakTotal,
                                 values: services.values, opStatesNormal: opStates(reduction: false), opStatesReduce: opStates(reduction: true),
                                 cells: supernet.space.cells,
                                 slotStates: supernet.hyperConnected ? (0..<supernet.slotCount).map { opStates(slot: $0) } : nil,
                                 inputStates: supernet.hyperConnected ? inputStatesByCell() : nil,
                                 auxiliaryCells: supernet.hyperConnected ? supernet.space.auxiliaryCells : nil,
                                 pluginStates: try savePluginStates(),
                                 archLossSum: position.tally.archLossTotal.sum, archLossCount: position.tally.archLossTotal.count,
                                 regularizerTermSums: regularizers.map(\.termSum), regularizerTermCounts: regularizers.map(\.termCount))
        let meta = String(decoding: try JSONEncoder().encode(st), as: UTF8.self)
        let file = try SafeTensorsFile(named: Dictionary(uniqueKeysWithValues: stateTensors), metadata: ["espalier.search": meta])
        try writeRankCheckpointIfAsked(file)
        guard let dir = outDirectory else { return nil }
        let path = (dir as NSString).appendingPathComponent(Self.checkpointName)
        try file.write(path: path, checksum: true)
        return path
    }

    /// Restores a checkpoint written by `checkpoint()` of a run with the same config.
    public func restore(checkpoint path: String) throws {
        try restore(file: try SafeTensorsFile.read(path: path), path: path)   // read verifies the checksum
    }

    /// Restores a checkpoint already read (`path` names it in errors).
    func restore(file: SafeTensorsFile, path: String) throws {
        guard let meta = file.metadata["espalier.search"] else {
            throw EspalierError.data(file: path, problem: "not a search checkpoint (no espalier.search metadata)")
        }
        // A state with NaN or ∞ cannot continue a search: it was written by a diverging run or damaged.
        for name in file.names {
            if let i = file.tensors[name]!.values.firstIndex(where: { !$0.isFinite }) {
                throw EspalierError.data(file: path, problem: "tensor '\(name)' holds a non-finite value (\(file.tensors[name]!.values[i]) at index \(i)): "
                                         + "the state is damaged and cannot be resumed; start the search again (--resume \((path as NSString).deletingLastPathComponent) --restart)")
            }
        }
        let st: CheckpointState
        do { st = try JSONDecoder().decode(CheckpointState.self, from: Data(meta.utf8)) } catch {
            throw EspalierError.data(file: path, problem: "damaged checkpoint metadata: \(error)")
        }
        // Depth first (a grown supernet), then op states: removed ops take their parameters out of the state being loaded.
        if let cells = st.cells, cells != supernet.space.cells || (st.auxiliaryCells.map { $0 != supernet.space.auxiliaryCells } ?? false) {
            try grow(cells: cells, auxiliaryCells: st.auxiliaryCells)
        }
        let sp = supernet.space
        if let slots = st.slotStates {
            for (slot, states) in slots.enumerated() where slot < supernet.slotCount {
                for (i, raw) in states.enumerated() where raw != OpState.active.rawValue {
                    try setOpState(slot: slot, edge: i / sp.ops.count, op: i % sp.ops.count, OpState(rawValue: raw) ?? .active)
                }
            }
        }
        if let inputs = st.inputStates { try applyInputStates(inputs) }
        for (reduction, states) in [(false, st.opStatesNormal), (true, st.opStatesReduce)] {
            guard states.count == sp.edgesPerCell * sp.ops.count else {
                throw EspalierError.data(file: path, problem: "op states for \(states.count) candidates, the space has \(sp.edgesPerCell * sp.ops.count)")
            }
            for (i, raw) in states.enumerated() where raw != OpState.active.rawValue {
                try setOpState(reduction: reduction, edge: i / sp.ops.count, op: i % sp.ops.count, OpState(rawValue: raw) ?? .active)
            }
        }
        for (name, v) in st.values.sorted(by: { $0.key < $1.key }) { try services.setValue(name, v) }
        try file.load(into: stateTensors, strict: true)
        epoch = st.epoch; globalStep = st.globalStep; position.tally.stepInEpoch = st.stepInEpoch
        position.tally.lossSum = st.lossSum; position.tally.correct = st.correct; position.tally.seen = st.seen
        position.tally.stepTimes = st.stepTimes
        try trainLoader.restore(st.trainLoader)
        try validLoader.restore(st.validLoader)
        graph.rng = st.graphRNG
        context.rng = st.contextRNG
        weightOptimizer.stepCount = st.sgdSteps
        archOptimizer.stepCount = st.adamSteps
        weightOptimizer.learningRate = st.learningRate
        if let sum = st.archLossSum, let count = st.archLossCount { position.tally.archLossTotal = (sum, count) }
        if let sums = st.regularizerTermSums, let counts = st.regularizerTermCounts, sums.count == regularizers.count, counts.count == sums.count {
            for (i, r) in regularizers.enumerated() { r.restoreTermSum(sums[i], count: counts[i]) }
        }
        // Last: a plugin's state may refer to what the host restored above (cells, op states, values).
        try loadPluginStates(st.pluginStates ?? [:], checkpoint: path)
    }

    /// The key of a plugin's blob in the checkpoint: "strategy/ID" or "regularizer/INDEX/ID".
    var statefulPlugins: [(key: String, id: String, save: () throws -> [UInt8]?, load: ([UInt8]) throws -> Bool)] {
        [("strategy/" + strategy.component.id, strategy.component.id, strategy.saveState, strategy.loadState)]
            + regularizers.enumerated().map { i, r in ("regularizer/\(i)/" + r.component.id, r.component.id, r.saveState, r.loadState) }
    }

    /// Every plugin's non-empty save_state blob, base64 (nil when none keeps state).
    func savePluginStates() throws -> [String: String]? {
        var out: [String: String] = [:]
        for p in statefulPlugins {
            if let bytes = try p.save(), !bytes.isEmpty { out[p.key] = Data(bytes).base64EncodedString() }
        }
        return out.isEmpty ? nil : out
    }

    /// Hands each plugin its blob; one it rejects (or that is not base64) is an error naming the
    /// plugin, the checkpoint and the way out. Blobs for plugins that keep no state are ignored.
    func loadPluginStates(_ states: [String: String], checkpoint path: String) throws {
        for p in statefulPlugins {
            guard let text = states[p.key] else { continue }
            let fix = "the checkpoint was written by another version of the plugin or is damaged; start the search again without --resume (or with another --out)"
            guard let data = Data(base64Encoded: text) else {
                throw EspalierError.data(file: path, problem: "the saved state of \(p.id) is not base64: \(fix)")
            }
            do { _ = try p.load(Array(data)) } catch {
                throw EspalierError.data(file: path, problem: "\(p.id) cannot restore its saved state (\(error)): \(fix)")
            }
        }
    }

    func opStates(reduction: Bool) -> [Int32] {
        let sp = supernet.space
        return (0..<sp.edgesPerCell).flatMap { e in (0..<sp.ops.count).map { supernet.opState(reduction: reduction, edge: e, op: $0).rawValue } }
    }

    func appendLog(_ log: SearchEpochLog) throws { try appendLogLine(log) }

    /// The encoder of log lines: snake-case keys, sorted, and non-finite numbers as "nan", "inf", "-inf".
    static var logEncoder: JSONEncoder {
        let enc = JSONEncoder()
        enc.keyEncodingStrategy = .convertToSnakeCase
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return enc
    }

    func appendLogLine<T: Encodable>(_ record: T) throws {
        guard let dir = outDirectory, !accountant.isDryRun else { return }
        let path = (dir as NSString).appendingPathComponent("log.jsonl")
        var line = try Self.logEncoder.encode(record)
        line.append(0x0A)
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { throw EspalierError.data(file: path, problem: "cannot open the log for writing") }
        defer { try? h.close() }
        try h.seekToEnd()
        try h.write(contentsOf: line)
    }

    /// Keeps only the log lines of epochs the checkpoint has finished, each once: a kill between
    /// the log line and the checkpoint leaves a line of an epoch the checkpoint does not hold,
    /// and a divergence leaves its own line. Lines are matched by their `epoch` field; a line
    /// that cannot be read (a half-written last line) is dropped.
    static func trimLog(in dir: String, toEpochs epochs: Int) throws {
        let path = (dir as NSString).appendingPathComponent("log.jsonl")
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        var seen = Set<Int>()
        var kept: [Substring] = []
        for line in text.split(separator: "\n") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let e = obj["epoch"] as? Int, obj["diverged"] == nil, e >= 1, e <= epochs, !seen.contains(e) else { continue }
            seen.insert(e)
            kept.append(line)
        }
        try AtomicFile.write(kept.map { $0 + "\n" }.joined(), to: path)
    }

    /// Removes the temporary files an interrupted atomic write left in `dir` (`.NAME.tmp-PID-N`,
    /// see `AtomicFile`), for the files a run writes. Returns their names.
    @discardableResult
    static func removeStaleTemporaries(in dir: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        let ours = [checkpointName, "config.json", "log.jsonl", "genotype.json", "memory.csv", "memory.svg", "pruned.json", "ranks.json"]
        let stale = names.filter { n in ours.contains { n.hasPrefix(".\($0).tmp-") } }
        for n in stale { try? FileManager.default.removeItem(atPath: (dir as NSString).appendingPathComponent(n)) }
        return stale
    }

    /// genotype.json and the cell pictures. Returns the written paths.
    @discardableResult
    public func writeResults() throws -> [String] {
        guard let dir = outDirectory, !accountant.isDryRun else { return [] }
        let genotype = try deriveWithSettings()   // with every component's settings, for `espalier train`
        let path = (dir as NSString).appendingPathComponent("genotype.json")
        try genotype.save(path: path)
        return [path] + (try genotype.writePictures(directory: dir)) + (try writePrunedArchitecture())
    }

    // MARK: - Starting and resuming

    /// Writes config.json for a new run in `dir`, which must not exist yet or be empty: a folder
    /// that holds anything else (another run, or files that are not a run's) is never touched.
    /// The caller holds the folder's lock (`RunFolderLock.acquire`, RunFolder.swift).
    public static func prepareOutput(_ dir: String, config: SearchConfig) throws {
        try RunFolder.checkNew(dir)
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw EspalierError.config("cannot create the output folder \(dir) (\(error.localizedDescription)); choose another --out")
        }
        try saveConfig(config, in: dir)
    }

    /// Rewrites config.json of the run in `dir` (after `--resume` changed what may change).
    public static func saveConfig(_ config: SearchConfig, in dir: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try enc.encode(config), to: (dir as NSString).appendingPathComponent("config.json"))
    }

    /// Where the checkpoint in `dir` stands (it is read whole, so its checksum is verified): the
    /// epochs it has finished and its global step. Throws if there is none or it is damaged.
    public static func checkpointPosition(in dir: String) throws -> (epochsDone: Int, globalStep: Int) {
        let path = (dir as NSString).appendingPathComponent(checkpointName)
        let file = try SafeTensorsFile.read(path: path)
        guard let meta = file.metadata["espalier.search"] else { throw EspalierError.data(file: path, problem: "not a search checkpoint") }
        let st = try JSONDecoder().decode(CheckpointState.self, from: Data(meta.utf8))
        return (st.epoch, st.globalStep)
    }

    /// The config of the run in `dir`.
    public static func loadConfig(_ dir: String) throws -> SearchConfig {
        let path = (dir as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EspalierError.config("\(dir) has no config.json: is it the --out folder of a search?")
        }
        var config: SearchConfig
        do { config = try JSONDecoder().decode(SearchConfig.self, from: data) } catch {
            throw EspalierError.data(file: path, problem: "not a search config: \(error)")
        }
        // A search started before `affineOps` existed built DARTS's search ops; it resumes with
        // them, whatever a strategy's `affine_ops` default says now (GSparsity's is true).
        let space = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["space"] as? [String: Any]
        if let space, space["affineOps"] == nil, config.strategySettings["affine_ops"] == nil {
            config.strategySettings["affine_ops"] = "false"
        }
        return config
    }

    /// Restores the checkpoint in `dir` and trims the log to it, after removing the temporary
    /// files an interrupted write left. A folder without a checkpoint (stopped before its first
    /// epoch ended) is an error unless `restart` says to start it over from its config.json.
    /// On several ranks every rank calls it: rank 0 reads the folder and sends the checkpoint's
    /// bytes to the others (which need no access to the folder), so every rank restores the same
    /// state, whatever the rank count that wrote it.
    public func resume(from dir: String, restart: Bool = false) throws {
        if ranks.isDistributed {
            struct Outcome: Codable { var error: String?; var found: Bool }
            var bytes: [UInt8] = []
            var outcome = Outcome(error: nil, found: false)
            if ranks.isRoot {
                do {
                    Self.removeStaleTemporaries(in: dir)
                    let path = (dir as NSString).appendingPathComponent(Self.checkpointName)
                    outcome.found = FileManager.default.fileExists(atPath: path)
                    try Self.checkResumeRequest(dir: dir, found: outcome.found, restart: restart)
                    if outcome.found { bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) } else { try Self.trimLog(in: dir, toEpochs: 0) }
                } catch { outcome.error = "\(error)" }
            }
            outcome = try ranks.broadcast(ranks.isRoot ? outcome : nil)
            if let e = outcome.error { throw EspalierError.config(e) }
            guard outcome.found else { return }
            try ranks.broadcast(&bytes, root: 0)
            let path = (dir as NSString).appendingPathComponent(Self.checkpointName)
            try restore(file: try SafeTensorsFile.decode(Data(bytes), file: path), path: path)
            if ranks.isRoot { try Self.trimLog(in: dir, toEpochs: epoch) }
            return
        }
        Self.removeStaleTemporaries(in: dir)
        let path = (dir as NSString).appendingPathComponent(Self.checkpointName)
        let found = FileManager.default.fileExists(atPath: path)
        try Self.checkResumeRequest(dir: dir, found: found, restart: restart)
        guard found else {
            try Self.trimLog(in: dir, toEpochs: 0)
            return
        }
        try restore(checkpoint: path)
        try Self.trimLog(in: dir, toEpochs: epoch)
    }

    /// --restart goes with a folder without a checkpoint, and only with one.
    static func checkResumeRequest(dir: String, found: Bool, restart: Bool) throws {
        if !found && !restart {
            throw EspalierError.config("\(dir) holds no checkpoint (the search stopped before its first epoch ended), so there is nothing to "
                                       + "resume; start it over with its own config: espalier search --resume \(dir) --restart")
        }
        if found && restart {
            throw EspalierError.config("\(dir) holds a checkpoint, so --restart (which starts over a search stopped before its first checkpoint) "
                                       + "would throw it away; resume it without --restart, or start a new search with another --out")
        }
    }
}
