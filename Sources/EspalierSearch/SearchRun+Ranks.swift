// A search on several ranks (mpirun -np N): data parallel, every rank holding the same state.
// Each rank runs the forward and backward of its share of every global batch, with its loss
// scaled by share/batch; `exchange` then sums, in ONE call over one flat float32 buffer (tensor
// fusion), every gradient that backward filled plus the loss, the correct count and the
// interrupt flag, so every rank applies the same optimiser step to the same sums. Regularizers,
// gates and strategies run on every rank on those identical inputs. Batch norm normalises each
// share with its own statistics; the running statistics a training forward moved ride in the same
// exchange and are averaged, so every rank holds the same ones after every step (and thus before
// every evaluation and checkpoint, where they are averaged once more, a no-op on equal values),
// and a run stopped and resumed anywhere takes the same path as one that was not. At every checkpoint the ranks compare a checksum of their whole
// state (weights, α, statistics, optimiser state, plugin state, op states), and stop with an
// error naming the ranks if it differs. In one process every function here returns at once.

import EspalierCore
import EspalierHost
import Foundation

/// The ranks of a search hold different states (found at a checkpoint).
public struct RanksDiverged: Error, CustomStringConvertible {
    public let ranks: [Int], epoch: Int, step: Int
    public var description: String {
        "the state of rank\(ranks.count == 1 ? "" : "s") \(ranks.map(String.init).joined(separator: ", ")) differs from rank 0's at epoch \(epoch) step \(step): "
            + "the ranks are no longer in step (a plugin drawing random numbers outside the host's services, or reading its rank, can do this); "
            + "the last checkpoint is rank 0's of the previous epoch"
    }
}

extension SearchRun {
    /// The parameters whose gradients the ranks sum: those the next backward fills.
    var exchangedParameters: [Parameter] {
        (supernet.weights + supernet.archParameters).filter { $0.requiresGrad && $0.grad != nil }
    }

    /// Values per exchange after the gradients: the loss·share split in two floats (high part and
    /// the rest, so the sum keeps a double's precision), the correct count, the interrupt flag.
    static let exchangeExtras = 4

    /// Floats the exchange of a weight step sends (every weight's gradient, the running statistics, the extras).
    public var exchangeFloats: Int {
        (supernet.weights.reduce(0) { $0 + $1.count }) + (supernet.buffers.reduce(0) { $0 + $1.count }) + Self.exchangeExtras
    }

    /// Sums this rank's share of the loss (`weightedLoss` = its mean loss × share), its correct
    /// count and, with `gradients`, every gradient the backward filled, over the ranks: one
    /// exchange of one buffer, counted by the accountant as workspace under owner "allreduce".
    /// Returns the global (loss, correct). One process: returns its arguments.
    func exchange(weightedLoss: Double, correct: Int, gradients: Bool) throws -> (Double, Int) {
        guard ranks.isDistributed else { return (weightedLoss, correct) }
        let params = gradients ? exchangedParameters : []
        // A training-mode forward moved the running statistics: they are averaged in the same exchange.
        let buffers = graph.training ? supernet.buffers : []
        let statistics = buffers.reduce(0) { $0 + $1.count }
        let total = params.reduce(0) { $0 + $1.count } + statistics + Self.exchangeExtras
        let buffer = try accountant.withOwner("allreduce") { try Tensor(shape: [total], category: .workspace, accountant: accountant) }
        rankState.exchangesThisStep += 1
        guard !buffer.isVirtual else { return (0, 0) }
        if graph.training { rankState.floatsExchanged += total }
        let p = buffer.ptr
        var at = 0
        for q in params { p.advanced(by: at).update(from: q.grad!.ptr, count: q.count); at += q.count }
        for b in buffers { p.advanced(by: at).update(from: b.ptr, count: b.count); at += b.count }
        let high = Float(weightedLoss)
        p[at] = high
        p[at + 1] = Float(weightedLoss - Double(high))
        p[at + 2] = Float(correct)
        p[at + 3] = searchInterruptRequested != 0 ? 1 : 0
        try ranks.sum(UnsafeMutableBufferPointer(start: p, count: total))
        at = 0
        for q in params { q.grad!.ptr.update(from: p.advanced(by: at), count: q.count); at += q.count }
        let size = Float(ranks.size)
        for b in buffers {
            for i in 0..<b.count { b.ptr[i] = p[at + i] / size }
            at += b.count
        }
        rankState.interruptAgreed = p[at + 3] > 0
        return (Double(p[at]) + Double(p[at + 1]), Int(p[at + 2].rounded()))
    }

    /// True on every rank when any rank was interrupted (Ctrl-C, a signal): what the step's last
    /// exchange agreed, or, for a step without one, a small exchange of its own. One process:
    /// the flag itself.
    func interruptAgreed() throws -> Bool {
        guard ranks.isDistributed else { return searchInterruptRequested != 0 }
        defer { rankState.exchangesThisStep = 0; rankState.steps += 1 }
        if rankState.exchangesThisStep == 0 || accountant.isDryRun {
            rankState.interruptAgreed = try ranks.any(searchInterruptRequested != 0)
        }
        return rankState.interruptAgreed
    }

    /// Every batch norm's running statistics (and any other buffer) averaged over the ranks, in
    /// double precision, so that every rank holds the same ones (before evaluation and checkpoints).
    func averageBuffersOverRanks() throws {
        guard ranks.isDistributed else { return }
        let buffers = supernet.buffers
        let n = buffers.reduce(0) { $0 + $1.count }
        guard n > 0 else { return }
        // n doubles, as 2n floats of workspace.
        let t = try accountant.withOwner("allreduce") { try Tensor(shape: [2 * n], category: .workspace, accountant: accountant) }
        guard !t.isVirtual else { return }
        try UnsafeMutableRawPointer(t.ptr).withMemoryRebound(to: Double.self, capacity: n) { d in
            var at = 0
            for b in buffers { for i in 0..<b.count { d[at + i] = Double(b.ptr[i]) }; at += b.count }
            try ranks.sum(UnsafeMutableBufferPointer(start: d, count: n))
            at = 0
            let size = Double(ranks.size)
            for b in buffers { for i in 0..<b.count { b.ptr[i] = Float(d[at + i] / size) }; at += b.count }
        }
    }

    /// The checksum of everything a checkpoint holds of the model and the plugins (not timings).
    func stateChecksum() throws -> String {
        var meta: [String: String] = [:]
        for (k, v) in try savePluginStates() ?? [:] { meta["plugin/" + k] = v }
        meta["values"] = services.values.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.bitPattern)" }.joined(separator: ",")
        meta["ops"] = (opStates(reduction: false) + opStates(reduction: true)).map(String.init).joined(separator: ",")
        meta["position"] = "\(epoch)/\(globalStep)/\(position.tally.stepInEpoch)"
        return try SafeTensorsFile(named: Dictionary(uniqueKeysWithValues: stateTensors), metadata: meta).contentChecksum()
    }

    /// Before a checkpoint: every rank has reached this step, the statistics are averaged, and the
    /// states agree (else every rank throws `RanksDiverged`). Collective.
    func agreeOnState() throws {
        guard ranks.isDistributed, !accountant.isDryRun else { return }
        try averageBuffersOverRanks()
        if let perturb = ProcessInfo.processInfo.environment["ESPALIER_TEST_PERTURB_RANK"], Int(perturb) == ranks.rank,
           let w = supernet.weights.first {
            w.value.ptr[0] = w.value.ptr[0].nextUp   // for the test that this check catches a rank out of step
        }
        let mine = try stateChecksum()
        let root: String = try ranks.broadcast(ranks.isRoot ? mine : nil)
        var differs = [Double](repeating: 0, count: ranks.size)
        differs[ranks.rank] = mine == root ? 0 : 1
        let all = try ranks.sum(differs)
        let out = all.enumerated().filter { $0.element > 0 }.map(\.offset)
        if !out.isEmpty { throw RanksDiverged(ranks: out, epoch: epoch, step: globalStep) }
    }

    /// Test hook (ESPALIER_RANK_CHECKPOINTS=DIR): every rank writes its own checkpoint as
    /// DIR/rank-R.safetensors, so a test can compare the ranks' states byte for byte.
    func writeRankCheckpointIfAsked(_ file: SafeTensorsFile) throws {
        guard let dir = ProcessInfo.processInfo.environment["ESPALIER_RANK_CHECKPOINTS"], !accountant.isDryRun else { return }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try file.write(path: (dir as NSString).appendingPathComponent("rank-\(ranks.rank).safetensors"), checksum: true)
    }

    /// The host's random services (the strategy's and the gates' draws) and the graph's, seeded
    /// anew before every step from (seed, step) alone: the same on every rank, whatever the rank
    /// count, and whatever any rank drew before. (A step taken again at the same `globalStep`
    /// without the loop, k times, is keyed by k too, so it draws anew.)
    func reseedRandomForStep() {
        let st = rankState
        st.seeded = st.seeded.step == globalStep ? (globalStep, st.seeded.count + 1) : (globalStep, 0)
        var mix = RNG(seed: config.seed ^ (UInt64(globalStep) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(st.seeded.count) &* 0xD1B5_4A32_D192_ED03))
        context.rng = RNG(seed: mix.next())
        graph.rng = RNG(seed: mix.next())
    }

    /// A loader over `view` that hands this rank its share of every batch.
    func shardedLoader(_ view: DataView, shuffle: Bool, dropLast: Bool, seed: UInt64 = 0) throws -> DataLoader {
        let l = try DataLoader(view, batchSize: config.batchSize, shuffle: shuffle, dropLast: dropLast, seed: seed)
        l.shard = (ranks.rank, ranks.size)
        return l
    }
}

/// OUT/ranks.json: what each rank of a search on several ranks held (written by rank 0).
public struct RankReport: Codable, Sendable {
    public struct Rank: Codable, Sendable {
        public var rank: Int
        /// Images of each training batch this rank trains on.
        public var batchShare: Int
        /// The accountant's peak on this rank over the run (dataset included), and the dry run's
        /// prediction for this rank (`espalier memory --ranks N` gives the largest of them).
        public var peakBytes: Int
        public var predictedPeakBytes: Int?
    }
    public var ranks: Int
    public var transport: String
    public var batchSize: Int
    /// Floats in one gradient exchange of a weight step (gradients, running statistics, loss, count, flag).
    public var floatsPerExchange: Int
    /// Bytes this search summed over the ranks per training step, measured (every exchange of the
    /// steps: α's and the weights' gradients, batch_loss calls; evaluations excluded).
    public var exchangedBytesPerStep: Int?
    public var perRank: [Rank]
}

extension SearchRun {
    /// Gathers every rank's peak (and its prediction) and has rank 0 write OUT/ranks.json.
    /// Collective; nothing in one process.
    public func writeRankReport(predictedPeak: Int?) throws {
        guard ranks.isDistributed else { return }
        var mine = [Double](repeating: 0, count: 2 * ranks.size)
        mine[2 * ranks.rank] = Double(max(runPeakBytes, accountant.peakTotal))
        mine[2 * ranks.rank + 1] = Double(predictedPeak ?? -1)
        let all = try ranks.sum(mine)
        guard ranks.isRoot, let dir = outDirectory else { return }
        let st = rankState
        let report = RankReport(ranks: ranks.size, transport: ranks.transport, batchSize: config.batchSize, floatsPerExchange: exchangeFloats,
                                exchangedBytesPerStep: st.steps > 0 ? 4 * st.floatsExchanged / st.steps : nil,
                                perRank: (0..<ranks.size).map { r in
                                    RankReport.Rank(rank: r, batchShare: Shards.range(part: r, of: ranks.size, count: config.batchSize).count,
                                                    peakBytes: Int(all[2 * r]), predictedPeakBytes: all[2 * r + 1] < 0 ? nil : Int(all[2 * r + 1]))
                                })
        let enc = Self.logEncoder
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try enc.encode(report), to: (dir as NSString).appendingPathComponent("ranks.json"))
    }
}
