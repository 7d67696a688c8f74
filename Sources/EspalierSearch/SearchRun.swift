// The common search trainer. It owns the data (a 50/50 split of the training set; SearchData),
// the supernet, the optimisers (SGD on weights, Adam on α; SearchUpdates), what it records and
// where it is (SearchRecords, SearchPosition), counts memory with its context's accountant, and
// asks the strategy plugin what each step does: bilevel (α step on a validation batch, first or
// second order, then a weight step on a training batch), single-level, weights only, forward
// only, or nothing.
// A strategy without architecture parameters (ES_REQUIRES_NO_ARCH_PARAMS, GSparsity) gets a
// supernet whose edges sum their ops (no gate, no α step); a proximal regularizer with
// `owns_update=true` replaces the SGD step itself (see SearchRun+Regularizers.swift).
// Each epoch it scores the validation half, logs a JSON line, and checkpoints atomically; an
// interrupt checkpoints mid-epoch, and a resumed run continues bit for bit.

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

/// One epoch's record (a line of OUT/log.jsonl).
public struct SearchEpochLog: Codable, Sendable {
    public var epoch: Int
    public var trainLoss: Double, trainAccuracy: Double
    public var validLoss: Double, validAccuracy: Double
    public var learningRate: Float
    public var seconds: Double
    public var medianStepSeconds: Double
    public var peakBytes: Int
    public var peakByCategory: [String: Int]
    /// Raw architecture logits and the gate's mixing weights, (edges, ops) per cell type.
    public var alphaNormal: [[Float]], alphaReduce: [[Float]]
    public var weightsNormal: [[Float]], weightsReduce: [[Float]]
    public var genotype: Genotype
    /// The mean architecture loss of the epoch's architecture steps (validation data loss plus the
    /// regularizers' terms), and each regularizer's mean term by instance key (id; `id#2` for a
    /// second selection); nil when the epoch had none, and in logs written before they existed.
    public var archLoss: Double? = nil
    public var regularizerTerms: [String: Double]? = nil
    /// The process's peak resident set in the epoch, and the part of it the accountant does not
    /// count (peak RSS − peakBytes; outside --memory-budget). nil where /proc cannot be read.
    public var rssPeakBytes: Int? = nil, unaccountedBytes: Int? = nil
}

/// The log line of a search that diverged (`diverged` is always true; `loss` may be nan or inf,
/// written as the strings "nan", "inf", "-inf").
public struct SearchDivergenceLog: Codable, Sendable {
    public var epoch: Int, step: Int, globalStep: Int
    public var loss: Double
    public var diverged = true
    public var message: String
}

/// Progress of a run (the CLI draws a bar; tests pass nil).
public protocol SearchProgress: AnyObject {
    func step(_ done: Int, of total: Int, loss: Double, accuracy: Double)
    func epochDone(_ log: SearchEpochLog)
}

/// Set from a signal handler; the run checkpoints and stops after the current step.
nonisolated(unsafe) public var searchInterruptRequested: Int32 = 0

/// A non-finite training loss: the search stops at once, keeping the last good checkpoint.
public struct SearchDiverged: Error, CustomStringConvertible {
    public let epoch: Int, step: Int, loss: Double
    /// "training" (a step's loss) or "validation" (the epoch's evaluation).
    public let which: String
    /// The last good checkpoint, if one was written.
    public let checkpoint: String?
    public var description: String {
        "the search diverged at epoch \(epoch) step \(step) (\(which) loss \(loss.isNaN ? "NaN" : loss > 0 ? "+∞" : "−∞")); lower --lr / --arch-lr"
            + (checkpoint.map { ". The last good checkpoint is \($0) (epoch \(epoch - 1) finished)" } ?? "; no epoch had finished, so no checkpoint was kept")
    }
}

public struct SearchInterrupted: Error, CustomStringConvertible {
    public let checkpoint: String
    public var description: String { "interrupted: checkpoint written to \(checkpoint); continue with --resume" }
}

public final class SearchRun {
    public let config: SearchConfig
    public let context: HostContext
    public internal(set) var supernet: Supernet
    public let strategy: PluginStrategy
    public let graph: Graph
    let registry: PluginRegistry
    /// The two halves of the training split and the evaluation's view (SearchData.swift).
    let data: SearchData
    /// The optimisers, schedules and regularizers of every step (SearchUpdates.swift).
    var updates: SearchUpdates
    /// What the run writes and remembers: notes, logs, its folder (SearchRecords.swift).
    var records: SearchRecords
    /// Where the run is (checkpointed; SearchPosition.swift).
    var position = SearchPosition()
    /// The ranks and what their exchanges agreed and counted (SearchRanks.swift, SearchRun+Ranks.swift).
    let rankState: SearchRanks
    /// What strategy plugins act through (`host->search`), with the state that serves them alone:
    /// named and published values, the step's batches, a prediction's op-state view.
    public private(set) lazy var services = SearchServices(run: self)

    // What callers (the CLI, tests) and the extensions read and set, forwarded to the parts above.

    /// The context's accountant (a context is begun with its run's accountant before the run is built).
    public var accountant: MemoryAccountant { context.accountant }
    public var trainLoader: DataLoader { data.trainLoader }
    public var validLoader: DataLoader { data.validLoader }
    public internal(set) var weightOptimizer: SGD { get { updates.weightOptimizer } set { updates.weightOptimizer = newValue } }
    public internal(set) var archOptimizer: Adam { get { updates.archOptimizer } set { updates.archOptimizer = newValue } }
    /// Regularizer plugins, called in every architecture step (and after weight steps, proximal).
    public var regularizers: [PluginRegularizer] { updates.regularizers }
    /// The regularizer whose `proximal` IS the weight update (`owns_update=true`, ProxSGD); nil = SGD.
    public var updateOwner: PluginRegularizer? { updates.updateOwner }
    public var outDirectory: String? { records.outDirectory }
    /// What the run decided about its setup, in words (also written to standard error).
    public var notes: [String] { records.notes }
    /// Without α (GSparsity): validation accuracy before and after the ops the strategy removed
    /// at its last epoch end (nil until an epoch end removes something).
    public var pruning: (before: Double, after: Double, removed: Int)? { records.pruning }
    /// The log line of every epoch this process finished.
    public var logs: [SearchEpochLog] { records.logs }
    /// The largest epoch peak of this process (the accountant's, dataset included).
    public var runPeakBytes: Int { records.runPeakBytes }
    /// Epochs finished, and steps taken over the whole run (both checkpointed).
    public internal(set) var epoch: Int { get { position.epoch } set { position.epoch = newValue } }
    public internal(set) var globalStep: Int { get { position.globalStep } set { position.globalStep = newValue } }
    /// Stop (as if interrupted) after this many steps of this process; for tests.
    public var stopAfterSteps: Int? { get { position.stopAfterSteps } set { position.stopAfterSteps = newValue } }
    /// The ranks this search runs on (one process: SingleProcess); SearchRun+Ranks.swift.
    public var ranks: Communicator { rankState.communicator }

    /// Builds a run on `train` (split 50/50 into weight-train and arch-validation halves).
    /// On several ranks (`ranks`), every rank builds the same run; only rank 0 writes files (pass
    /// the output folder on rank 0 only), and each rank trains on its share of every batch.
    public init(config requested: SearchConfig, registry: PluginRegistry, context: HostContext, train: DataView, outDirectory: String?,
                ranks: Communicator = SingleProcess()) throws {
        let strategyComponent = try registry.require(requested.strategy, kind: .strategy)
        let config = try requested.withStrategySpace(strategyComponent)
        try config.validate()
        self.config = config
        self.context = context
        let accountant = context.accountant
        records = SearchRecords(outDirectory: outDirectory)
        self.registry = registry
        rankState = SearchRanks(communicator: ranks)
        // --batch-size is the global batch: every rank needs a sample of it, and every batch-norm group one.
        let groups = config.bnGroups ?? 1
        guard config.batchSize >= ranks.size * groups else {
            throw EspalierError.config("--batch-size \(config.batchSize) is the global batch, shared by \(ranks.size) rank\(ranks.size == 1 ? "" : "s")"
                                       + (groups > 1 ? " in \(groups) batch-norm groups each" : "") + ": it needs at least \(ranks.size * groups); "
                                       + "raise --batch-size or use fewer ranks" + (groups > 1 ? " or --bn-groups" : ""))
        }
        var space = config.space
        space.inputChannels = train.dataset.channels
        space.classes = train.dataset.numClasses
        // Hyper-connected: the reductions stay where the configured depth has them while the network grows.
        if space.hyperConnected && space.reductionCells == nil { space.reductionCells = [space.cells / 3, 2 * space.cells / 3] }
        if let id = config.channelGate {
            context.selectChannelGate(try registry.require(id, kind: .gate), settings: config.channelGateSettings ?? [:])
        }
        supernet = try accountant.withOwner("model") {
            try Supernet(space: space, registry: registry, context: context, gateID: config.gate, gateSettings: config.gateSettings,
                         opSettings: config.opSettings, seed: config.seed)
        }
        supernet.recompute = config.recomputePlan
        strategy = try PluginStrategy(strategyComponent, context: context, settings: config.strategySettings)
        let needs = strategy.requirements
        if needs & UInt32(ES_REQUIRES_NO_ARCH_PARAMS) != 0 {
            guard supernet.space.sumOps else {
                throw EspalierError.config("\(config.strategy) works without architecture parameters, but this supernet mixes ops with \(config.gate)")
            }
            records.notes.append("\(config.strategy) has no architecture parameters: every edge sums its ops with weight 1; the gate \(config.gate) is unused and α is not trained")
        }
        if supernet.space.scaleParameterFree {
            records.notes.append("parameter-free ops carry a learnable output scale (\(supernet.opScales.count) scalars, init 1, clamped to [0, 1] after each step)")
        }
        if needs & UInt32(ES_REQUIRES_SAMPLED_GATE) != 0 && !supernet.gateNormal.isSampled {
            throw EspalierError.config("\(config.strategy) samples one architecture per step and needs a sampled gate; \(config.gate) is deterministic (try espalier.gate.gdas/1)")
        }
        if needs & UInt32(ES_REQUIRES_HARD_GATE) != 0 && !supernet.gateNormal.isHard {
            throw EspalierError.config("\(config.strategy) runs only the chosen ops and needs a hard gate; \(config.gate) is soft, so every op would run")
        }
        let hasChannelMasks = !supernet.channelMaskedOps().isEmpty
        // Settings by instance key (id, id#2 for a regularizer selected twice; Selection.instanceKeys).
        let regularizers = try zip(config.regularizers, Selection.instanceKeys(config.regularizers)).map { id, key in
            let c = try registry.require(id, kind: .regularizer)
            let r = try context.accountant.withOwner("regularizer") {
                try PluginRegularizer(c, context: context, settings: config.regularizerSettings[key] ?? [:],
                                      ownerPath: "regularizer/" + c.shortName + key.dropFirst(id.count))
            }
            // Without α the only gate weights are channel masks (FiGS ops), if the space has any.
            if needs & UInt32(ES_REQUIRES_NO_ARCH_PARAMS) != 0 && (r.wants(.arch) || (r.wants(.gateWeights) && !hasChannelMasks)) {
                throw EspalierError.config("\(id) regularizes architecture parameters or gate weights, but \(config.strategy) has none")
            }
            if !r.hasLoss && !r.hasProximal { throw EspalierError.config("\(id) has neither a loss term nor a proximal step") }
            return r
        }
        let owners = try zip(Selection.instanceKeys(config.regularizers), regularizers).filter { key, r in
            try SearchRun.ownsUpdate(r, settings: config.regularizerSettings[key] ?? [:])
        }
        guard owners.count <= 1 else {
            throw EspalierError.config("\(owners.map(\.0).joined(separator: " and ")) both own the weight update (owns_update=true); at most one regularizer may replace the SGD step")
        }
        let updateOwner = owners.first?.1
        if let (id, _) = owners.first {
            records.notes.append("\(id) owns the weight update: no SGD step; its proximal step updates every weight (groups and the rest)")
        }
        // Said once, by the real run (not by the dry runs that predict its memory).
        if !accountant.isDryRun { for n in records.notes { FileHandle.standardError.write(Data("espalier: \(n)\n".utf8)) } }
        let schedules = try config.methods.sorted { $0.key < $1.key }.map { slot, name in
            guard ["tau.schedule", "lambda.schedule"].contains(slot) else {
                throw EspalierError.config("no value follows the schedule slot '\(slot)' in a search; the search schedules tau.schedule (gate.tau) and lambda.schedule (regularizer.lambda)")
            }
            guard let m = registry.methods(slot: slot).first(where: { $0.name == name }) else {
                throw EspalierError.config("no dynamic method '\(name)' for \(slot); available: \(registry.methods(slot: slot).map(\.name).sorted().joined(separator: ", "))")
            }
            return (slot, m)
        }
        let net = supernet
        let (weightOptimizer, archOptimizer) = try context.accountant.withOwner("optimizer") {
            // With an update-owning regularizer the SGD optimiser only carries the learning rate (no momentum buffers).
            (try SGD(parameters: net.weights, learningRate: config.learningRate, momentum: owners.isEmpty ? config.momentum : 0,
                     weightDecay: config.weightDecay),
             try Adam(parameters: net.archParameters, learningRate: config.archLearningRate, beta1: config.archBeta1,
                      beta2: config.archBeta2, weightDecay: config.archWeightDecay))
        }
        let schedule = CosineSchedule(maxLR: config.learningRate, minLR: config.minLearningRate, totalEpochs: config.epochs)
        updates = SearchUpdates(weightOptimizer: weightOptimizer, archOptimizer: archOptimizer, schedule: schedule, schedules: schedules,
                                regularizers: regularizers, updateOwner: updateOwner)
        graph = Graph(accountant: accountant, seed: config.seed &+ 101)
        graph.batchNormGroups = groups
        // A recomputed segment's replay draws the plugins' randomness again from where its forward did.
        graph.externalRandomness = (get: { [weak context] in context?.rng }, set: { [weak context] in context?.rng = $0 })
        let halves = try train.split(fraction: 0.5, seed: config.seed)
        // A search needs at least one batch in each half: with fewer images nothing would train,
        // and the run would "finish" with the untrained α.
        guard halves.train.count >= config.batchSize, halves.validation.count >= config.batchSize else {
            throw EspalierError.config("\(train.count) training image\(train.count == 1 ? "" : "s") (from \(train.dataset.name)) leave fewer than one batch of "
                                       + "\(config.batchSize) in each half (weights, α); use at least \(2 * config.batchSize) images or a smaller --batch-size")
        }
        let trainLoader = try DataLoader(halves.train, batchSize: config.batchSize, shuffle: true, dropLast: true, seed: config.seed &+ 1)
        let validLoader = try DataLoader(halves.validation, batchSize: config.batchSize, shuffle: true, dropLast: true, seed: config.seed &+ 2)
        // One global order from the seed; each rank takes its slice of every global batch.
        trainLoader.shard = (ranks.rank, ranks.size)
        validLoader.shard = (ranks.rank, ranks.size)
        data = SearchData(trainLoader: trainLoader, validLoader: validLoader,
                          validEvalView: config.evalImages.map { halves.validation.prefix($0) } ?? halves.validation)
        context.searchServices = services
        // Plugin calls outside a step (logged and derived mixing weights, graph_gate) see the real epoch and step.
        context.runState = { [weak self] in self?.state ?? RunState() }
    }

    /// Sets a candidate's state in every cell of its type; removing one also drops its parameters
    /// from the optimiser, so they and their state are freed.
    public func setOpState(reduction: Bool, edge: Int, op: Int, _ state: OpState) throws {
        try supernet.setOpState(reduction: reduction, edge: edge, op: op, state)
        if state == .removed { dropRemovedWeights() }
    }

    /// Sets a candidate's state in the cells of a slot (hyper-connected: one cell); removing frees it.
    public func setOpState(slot: Int, edge: Int, op: Int, _ state: OpState) throws {
        try supernet.setOpState(slot: slot, edge: edge, op: op, state)
        if state == .removed { dropRemovedWeights() }
    }

    /// Sets an inter-cell input's state (hyper-connected); removing frees its preprocessing.
    public func setInputState(cell: Int, input: Int, _ state: OpState) throws {
        try supernet.setInputState(cell: cell, input: input, state)
        if state == .removed { dropRemovedWeights() }
    }

    func dropRemovedWeights() {
        let alive = Set(supernet.weights.map(ObjectIdentifier.init))
        weightOptimizer.remove { !alive.contains(ObjectIdentifier($0)) }
    }

    var state: RunState {
        var s = RunState()
        s.step = globalStep
        s.totalSteps = config.epochs * trainLoader.batchesPerEpoch
        s.epoch = epoch
        s.totalEpochs = config.epochs
        s.learningRate = Double(weightOptimizer.learningRate)
        s.dryRun = accountant.isDryRun
        return s
    }

    // MARK: - Losses and gradients

    /// Which parameters get gradients in the next backward.
    public func train(weights: Bool, arch: Bool) {
        for p in supernet.weights { p.requiresGrad = weights }
        for p in supernet.archParameters { p.requiresGrad = arch }
    }

    /// Forward + loss (+ backward when something requires a gradient). Returns (loss, correct).
    /// `regularize`: an architecture step, so the regularizers' terms join the loss and α's gradient.
    /// On several ranks `images` is this rank's share of a batch of `globalSize` (nil: its own
    /// size): its loss is scaled by the share before backward, and the gradients, the loss and the
    /// correct count are summed over the ranks (`exchange`) before the regularizers add theirs, so
    /// the returned loss and correct count are the global batch's on every rank.
    @discardableResult
    public func lossAndGradients(_ images: Tensor, _ labels: [Int32], globalSize: Int? = nil, backward: Bool = true,
                                 regularize: Bool = false) throws -> (Double, Int) {
        do {
            return try accountant.withOwner("step") {
                let share = Double(labels.count) / Double(max(globalSize ?? labels.count, 1))
                var dataLoss = 0.0, c = 0, termValue = 0.0
                if !labels.isEmpty {
                    graph.opProfile?.beginForward()
                    let logits = try supernet.logits(graph, graph.constant(images), state: state)
                    var loss = try graph.softmaxCrossEntropy(logits, labels: labels)
                    // Auxiliary heads (training forwards only): + w·CE of each.
                    for aux in supernet.lastAuxLogits {
                        loss = try graph.add(loss, try graph.scale(try graph.softmaxCrossEntropy(aux, labels: labels), by: Float(supernet.space.auxiliaryWeight)))
                    }
                    dataLoss = graph.computing ? Double(loss.value[0]) : 0
                    c = graph.computing ? logits.value.correctCount(labels: labels) : 0
                    if regularize, let (term, v) = try accountant.withOwner("regularizer", { try gateWeightTerm(graph) }) {
                        loss = try graph.add(loss, term)
                        termValue = v
                    }
                    // A rank's share of the batch: its gradient counts share/batch of the sum.
                    if ranks.isDistributed { loss = try graph.scale(loss, by: Float(share)) }
                    // What the gradients already hold is the same on every rank (an earlier exchange, the
                    // regularizers): rank 0 keeps it, the others start from zero, so the sum counts it once.
                    if backward && ranks.isDistributed && !ranks.isRoot && graph.computing { for p in exchangedParameters { p.zeroGrad() } }
                    if backward { try graph.backward(loss) } else { graph.clearTape() }
                }
                let (globalLoss, globalCorrect) = try exchange(weightedLoss: ranks.isDistributed ? dataLoss * share : dataLoss,
                                                               correct: c, gradients: backward)
                c = globalCorrect
                var value = globalLoss + termValue
                if regularize && backward { value += try applyArchRegularizers() }
                if backward { value += try applyChannelMaskRegularizers() }
                if regularize && backward && graph.computing { position.tally.archLossTotal.sum += value; position.tally.archLossTotal.count += 1 }
                return (value, c)
            }
        } catch {
            // A failed forward (a refused allocation, a plugin's error) leaves nothing on the tape.
            graph.clearTape()
            throw error
        }
    }

    /// First-order architecture gradient: ∇α L_val(w, α), weights frozen.
    public func archGradientFirstOrder(valid: Batch) throws {
        train(weights: false, arch: true)
        archOptimizer.zeroGrad()
        try lossAndGradients(valid.images, valid.labels, globalSize: valid.globalSize, regularize: true)
    }

    /// Second-order (unrolled) architecture gradient, as DARTS's architect:
    ///   w' = w − η(m·buf + ∇w L_train(w, α) + wd·w)
    ///   ∇α = ∇α L_val(w', α) − η·[∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)] / 2R,  w± = w ± R·∇w' L_val, R = 0.01/‖∇w' L_val‖
    public func archGradientSecondOrder(train batch: Batch, valid: Batch) throws {
        let weights = supernet.weights
        let eta = weightOptimizer.learningRate
        let computing = !accountant.isDryRun
        // Snapshots: weights and batch-norm statistics (the unrolled model's statistics are discarded, as in DARTS).
        let saved = try accountant.withOwner("unrolled") { try weights.map { try $0.value.copy(category: .workspace) } }
        let savedBuffers = try accountant.withOwner("unrolled") { try supernet.buffers.map { try $0.copy(category: .workspace) } }
        func restoreWeights() { if computing { for (p, s) in zip(weights, saved) { p.value.ptr.update(from: s.ptr, count: p.count) } } }

        // 1. ∇w L_train(w, α) → w'.
        train(weights: true, arch: false)
        weightOptimizer.zeroGrad()
        try lossAndGradients(batch.images, batch.labels, globalSize: batch.globalSize)
        if computing {
            for (i, p) in weights.enumerated() {
                let x = p.value.ptr, g = p.grad!.ptr, wd = p.decay ? weightOptimizer.weightDecay : 0
                let buf = weightOptimizer.buffers[i]?.ptr, m = weightOptimizer.momentum
                for j in 0..<p.count { x[j] -= eta * ((buf.map { m * $0[j] } ?? 0) + g[j] + wd * x[j]) }
            }
        }
        // 2. L_val(w', α): ∇α and ∇w'.
        train(weights: true, arch: true)
        weightOptimizer.zeroGrad()
        archOptimizer.zeroGrad()
        try lossAndGradients(valid.images, valid.labels, globalSize: valid.globalSize, regularize: true)
        let dAlpha = try accountant.withOwner("unrolled") { try supernet.archParameters.map { try $0.grad!.copy(category: .workspace) } }
        let dW = try accountant.withOwner("unrolled") { try weights.map { try $0.grad!.copy(category: .workspace) } }
        if computing { for (b, s) in zip(supernet.buffers, savedBuffers) { b.ptr.update(from: s.ptr, count: b.count) } }

        // 3. Hessian-vector product by central differences.
        var norm2 = 0.0
        if computing { for g in dW { norm2 += Kernels.sumSquares(g.ptr, count: g.count) } }
        let r = Float(0.01 / max(norm2.squareRoot(), 1e-12))
        train(weights: false, arch: true)
        var gradients: [[Tensor]] = []
        for sign: Float in [1, -1] {
            restoreWeights()
            if computing { for (p, d) in zip(weights, dW) { Kernels.axpy(sign * r, d.ptr, p.value.ptr, count: p.count) } }
            archOptimizer.zeroGrad()
            try lossAndGradients(batch.images, batch.labels, globalSize: batch.globalSize)
            gradients.append(try accountant.withOwner("unrolled") { try supernet.archParameters.map { try $0.grad!.copy(category: .workspace) } })
        }
        restoreWeights()
        // 4. ∇α = dα − η·(g⁺ − g⁻)/2R.
        if computing {
            for (i, p) in supernet.archParameters.enumerated() {
                let out = p.grad!.ptr, da = dAlpha[i].ptr, gp = gradients[0][i].ptr, gn = gradients[1][i].ptr
                for j in 0..<p.count { out[j] = da[j] - eta * (gp[j] - gn[j]) / (2 * r) }
            }
        }
        weightOptimizer.zeroGrad()
    }

    /// One step as the strategy plans it. Returns (training loss, correct) of the weight step.
    @discardableResult
    public func step(train batch: Batch, valid: Batch?) throws -> (Double, Int) {
        // The step's batches, for the `batch_loss` search service (PARSEC).
        services.stepBatches = StepBatches(train: batch, valid: valid)
        defer { services.stepBatches = nil }
        reseedRandomForStep()
        try applySchedules()
        let plan = try strategy.planStep(state)
        if plan.mode != .skip { position.tally.onlySkippedThisEpoch = false }
        var result = (0.0, 0)
        switch plan.mode {
        case .bilevel, .singleLevel:
            let archBatch = plan.mode == .bilevel ? (valid ?? batch) : batch
            if plan.secondOrder && plan.mode == .bilevel { try archGradientSecondOrder(train: batch, valid: archBatch) }
            else { try archGradientFirstOrder(valid: archBatch) }
            let base = archOptimizer.learningRate
            archOptimizer.learningRate = base * Float(plan.archLRScale)
            archOptimizer.step()
            archOptimizer.learningRate = base
            result = try weightStep(batch)
        case .weightsOnly:
            result = try weightStep(batch)
        case .forwardOnly:
            result = try graph.noGrad { try lossAndGradients(batch.images, batch.labels, globalSize: batch.globalSize, backward: false) }
        case .skip:
            break
        }
        try strategy.afterStep(state)
        return result
    }

    public func weightStep(_ batch: Batch) throws -> (Double, Int) {
        train(weights: true, arch: false)
        weightOptimizer.zeroGrad()
        let r = try lossAndGradients(batch.images, batch.labels, globalSize: batch.globalSize)
        clipGradNorm(clippedWeights, maxNorm: config.gradClip)
        if updateOwner != nil { try applyOwnedUpdate() } else { weightOptimizer.step() }
        try applyProximal()
        clampOpScales()
        return r
    }

    /// Calls the chosen schedules (`--set tau.schedule=NAME`) and sets what they drive.
    func applySchedules() throws {
        let s = state
        for (slot, m) in updates.schedules {
            let v = try m.schedule(step: s.step, total: s.totalSteps)
            try services.setValue(slot == "tau.schedule" ? "gate.tau" : "regularizer.lambda", v)
        }
    }

    // MARK: - The loop

    /// Runs until `config.epochs` (or the strategy stops it). Throws `SearchInterrupted` after
    /// checkpointing when interrupted.
    public func run(progress: SearchProgress? = nil) throws {
        while epoch < config.epochs {
            if position.tally.stepInEpoch == 0 {
                weightOptimizer.learningRate = updates.schedule.learningRate(epoch: epoch)
                try withSectionValues { try strategy.epochBegin(state) }
                noteEpochStart()
                accountant.resetPeak()
                position.tally.lossSum = 0; position.tally.correct = 0; position.tally.seen = 0; position.tally.stepTimes = []
                position.tally.onlySkippedThisEpoch = true
                _ = takeEpochTerms()
            }
            let started = DispatchTime.now().uptimeNanoseconds
            let steps = trainLoader.batchesPerEpoch
            while let batch = try accountant.withOwner("batch", { try trainLoader.next(accountant: accountant) }) {
                let valid = try accountant.withOwner("batch") { try validLoader.nextCycling(accountant: accountant) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                let (loss, c) = try step(train: batch, valid: valid)
                guard loss.isFinite else { throw try diverged(loss: loss, which: "training", stepInEpoch: position.tally.stepInEpoch + 1) }
                position.tally.stepTimes.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                position.tally.lossSum += loss * Double(batch.globalSize); position.tally.correct += c; position.tally.seen += batch.globalSize
                position.tally.stepInEpoch += 1; globalStep += 1; position.stepsThisProcess += 1
                progress?.step(position.tally.stepInEpoch, of: steps, loss: position.tally.lossSum / Double(max(position.tally.seen, 1)),
                               accuracy: Double(position.tally.correct) / Double(max(position.tally.seen, 1)))
                if try interruptAgreed() || (position.stopAfterSteps.map { position.stepsThisProcess >= $0 } ?? false) {
                    records.runPeakBytes = max(records.runPeakBytes, accountant.peakTotal)
                    let path = try checkpoint()
                    throw SearchInterrupted(checkpoint: path ?? "(no output folder)")
                }
            }
            let (validLoss, validAcc) = position.tally.onlySkippedThisEpoch ? (0, 0) : try evaluate(data.validEvalView)
            guard validLoss.isFinite else { throw try diverged(loss: validLoss, which: "validation", stepInEpoch: position.tally.stepInEpoch) }
            var peaks: [String: Int] = [:]
            for c in MemoryCategory.allCases { peaks[c.name] = accountant.peakByCategory[c] }
            let sorted = position.tally.stepTimes.sorted()
            let terms = takeEpochTerms()
            var log = SearchEpochLog(
                epoch: epoch + 1, trainLoss: position.tally.lossSum / Double(max(position.tally.seen, 1)),
                trainAccuracy: Double(position.tally.correct) / Double(max(position.tally.seen, 1)),
                validLoss: validLoss, validAccuracy: validAcc, learningRate: weightOptimizer.learningRate,
                seconds: Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9,
                medianStepSeconds: sorted.isEmpty ? 0 : sorted[sorted.count / 2], peakBytes: accountant.peakTotal, peakByCategory: peaks,
                alphaNormal: supernet.logits(reduction: false), alphaReduce: supernet.logits(reduction: true),
                weightsNormal: try supernet.mixingWeights(reduction: false, accountant: accountant),
                weightsReduce: try supernet.mixingWeights(reduction: true, accountant: accountant),
                genotype: try derive(), archLoss: terms.arch, regularizerTerms: terms.regularizers)
            recordResidentSet(&log)
            let named = services.namedValues
            records.runPeakBytes = max(records.runPeakBytes, log.peakBytes)
            records.logs.append(log)
            var metrics = EpochMetrics()
            metrics.trainLoss = log.trainLoss; metrics.trainAccuracy = log.trainAccuracy
            metrics.validLoss = validLoss; metrics.validAccuracy = validAcc
            metrics.seconds = log.seconds; metrics.peakBytes = log.peakBytes
            let removedBefore = supernet.space.sumOps ? removedCount() : 0
            let stop = try withSectionValues { try strategy.epochEnd(state, metrics: metrics) }
            if supernet.space.sumOps, case let removed = removedCount() - removedBefore, removed > 0 {
                // The pruned network on the same validation images: no discretisation gap expected.
                let (_, after) = try evaluate(data.validEvalView)
                records.pruning = (validAcc, after, removed)
                let line = "pruned \(removed) ops: validation accuracy \(validAcc) before, \(after) after"
                records.notes.append(line)
                FileHandle.standardError.write(Data("espalier: \(line)\n".utf8))
            }
            epoch += 1
            position.tally.stepInEpoch = 0
            try appendLog(log)
            let predicted = try appendMemoryTimeline(epochPeak: log.peakBytes, rssPeak: log.rssPeakBytes)
            try writeTensorBoard(log, named: named, predicted: predicted)
            try checkpoint()
            progress?.epochDone(log)
            if stop { break }
        }
        try writeResults()
    }

    /// Records a divergence in the log (one line, `diverged: true`) and returns the error to
    /// throw. Nothing is checkpointed: the last checkpoint is the last good state.
    func diverged(loss: Double, which: String, stepInEpoch step: Int) throws -> SearchDiverged {
        let path = outDirectory.map { ($0 as NSString).appendingPathComponent(Self.checkpointName) }
        let kept = path.flatMap { FileManager.default.fileExists(atPath: $0) ? $0 : nil }
        let e = SearchDiverged(epoch: epoch + 1, step: step, loss: loss, which: which, checkpoint: kept)
        try appendLogLine(SearchDivergenceLog(epoch: epoch + 1, step: step, globalStep: globalStep + 1, loss: loss, message: e.description))
        return e
    }

    /// Candidates removed for good, over both cell types.
    func removedCount() -> Int {
        var n = 0
        for r in [false, true] {
            for e in 0..<supernet.space.edgesPerCell {
                for o in supernet.space.ops.indices where supernet.opState(reduction: r, edge: e, op: o) == .removed { n += 1 }
            }
        }
        return n
    }

    /// Recomputes every batch norm's running statistics for the current weights: the cumulative
    /// average over the first `batches` training batches, in training mode, without gradients.
    /// For supernets whose weights move fast (ProxSGD zeroing whole groups), whose running
    /// statistics otherwise lag behind and make evaluation-mode accuracy collapse.
    public func recalibrateBatchNorm(batches: Int) throws {
        guard batches > 0 else { return }
        let loader = try shardedLoader(trainLoader.view, shuffle: false, dropLast: true)
        graph.batchNormRecalibration = [:]
        defer { graph.batchNormRecalibration = nil }
        try graph.noGrad {
            var n = 0
            while n < batches, let b = try accountant.withOwner("batch", { try loader.next(accountant: accountant) }) {
                _ = try lossAndGradients(b.images, b.labels, globalSize: b.globalSize, backward: false)
                n += 1
            }
        }
    }

    /// Mean loss and accuracy on `view` in evaluation mode, no gradients (after recalibrating the
    /// batch-norm statistics when the config asks for it).
    public func evaluate(_ view: DataView) throws -> (Double, Double) {
        guard view.count > 0 else { return (0, 0) }
        try recalibrateBatchNorm(batches: config.bnRecalibrationBatches ?? 0)
        // Every rank evaluates with the same statistics, its share of each batch; counts are summed.
        try averageBuffersOverRanks()
        let loader = try shardedLoader(view, shuffle: false, dropLast: false)
        graph.training = false
        defer { graph.training = true }
        var lossSum = 0.0, correct = 0, seen = 0
        try graph.noGrad {
            while let b = try accountant.withOwner("batch", { try loader.next(accountant: accountant) }) {
                let (l, c) = try lossAndGradients(b.images, b.labels, globalSize: b.globalSize, backward: false)
                lossSum += l * Double(b.globalSize); correct += c; seen += b.globalSize
            }
        }
        return (lossSum / Double(max(seen, 1)), Double(correct) / Double(max(seen, 1)))
    }

    /// The architecture found: the strategy's own, or the DARTS rule. A search with the concat
    /// aggregator finds a network whose nodes concatenate too (unless the strategy says otherwise).
    public func derive() throws -> Genotype {
        var g = try derivedGenotype()
        if supernet.space.aggregator == .concat && g.aggregator == nil { g.aggregator = .concat }
        return g
    }

    private func derivedGenotype() throws -> Genotype {
        if supernet.space.sumOps { publishGroupNorms() }
        if let json = try strategy.derive(state) {
            do { return try JSONDecoder().decode(Genotype.self, from: Data(json.utf8)) } catch {
                throw EspalierError.config("\(config.strategy) derived an architecture that is not a genotype: \(error)")
            }
        }
        // Without α, ops with channel masks (FiGS): the exported network, per cell.
        if supernet.space.sumOps && !supernet.channelMaskedOps().isEmpty { return try channelMaskGenotype() }
        return try supernet.genotype(accountant: accountant)
    }
}
