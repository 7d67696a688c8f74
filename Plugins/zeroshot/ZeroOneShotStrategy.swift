// espalier.strategy.zero-one-shot/1: Zero-One-Shot (Half Search Space; Rumiantsev & Coates).
// Algorithm 1, once, before the first epoch: while (Π_i |E_i| over the edges of both cell
// types now) / (Π_i |E_i| at the start) > ξ, score every op of every edge that still has more
// than one (ETENAS's NNGP ranking, ZeroShotRanker.swift) and remove the lowest-scoring op of each
// such edge; at least one op stays per edge. `granularity=op` checks the stopping rule after each
// removal instead of after each round (lowest scores first), so the fraction lands nearer ξ.
// `mode=random` instead keeps each op with probability ξ (host RNG), at least one per edge.
// Pruned ops get `prune_state` (removed: parameters and optimiser state freed; masked: kept).
// Then DARTS's bilevel first-order steps on the masked space: the host's gate takes masked logits
// as −∞, so Mix = Σ I(o) e^{α_o} o(x) / Σ I(o') e^{α_o'}, and masked ops never run, allocate
// nothing and get no gradient. `partial_channels` and `edge_normalization` are the host's space
// options (PC-DARTS, the paper's setup); a regularizer such as espalier.regularizer.beta-decay/1
// joins through --regularizer. In a dry run (a memory prediction) one scoring pass of the whole
// space is taken (the ranking phase's peak: every later pass scores a smaller network) and each
// round removes one op of every edge without scores, as many as the real rounds remove; a
// whole-run prediction lands those removals on each edge's cheapest ops (the host's choice),
// so the training phase is predicted with the costliest ops kept. mode=random draws in a dry run
// as in the real run (the host RNG, seeded alike), so the prediction removes as many per edge.
// Saved state (format 1): whether the pruning ran, what it pruned and the fraction left (a resumed
// search must not prune again).

import EspalierPluginKit
import Foundation

final class ZeroOneShotStrategy: StrategyComponent, StatefulComponent {
    static let id = "espalier.strategy.zero-one-shot/1"

    let host: PluginHost
    let xi: Double
    let random: Bool
    let perOp: Bool
    let pruneState: SearchServices.OpState
    let batches: Int, repeats: Int
    let warmupEpochs: Int
    let partialChannels: Int
    let edgeNormalization: Bool
    /// True once Algorithm 1 (or the random mask) has run.
    private(set) var pruned = false
    /// What was pruned, in order.
    private(set) var removed: [Candidate] = []
    /// Π |E_i| now / at the start, after pruning.
    private(set) var fraction = 1.0

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        xi = try params.double("xi")
        guard xi > 0, xi < 1 else { throw PluginError.invalidArgument("\(Self.id): xi must be in (0, 1) (got \(xi)); the paper uses 0.5") }
        let mode = try params.string("mode")
        switch mode {
        case "zeroshot": random = false
        case "random": random = true
        default: throw PluginError.invalidArgument("\(Self.id): mode must be 'zeroshot' or 'random' (got '\(mode)')")
        }
        let g = try params.string("granularity")
        switch g {
        case "round": perOp = false
        case "op": perOp = true
        default: throw PluginError.invalidArgument("\(Self.id): granularity must be 'round' (Algorithm 1: one op per edge, then check) or 'op' (check after each removal) (got '\(g)')")
        }
        pruneState = try pruneStateParam(params, Self.id)
        batches = try params.int("batches")
        repeats = try params.int("repeats")
        guard batches >= 1 else { throw PluginError.invalidArgument("\(Self.id): batches must be >= 1 (got \(batches))") }
        guard repeats >= 1 else { throw PluginError.invalidArgument("\(Self.id): repeats must be >= 1 (got \(repeats))") }
        warmupEpochs = try params.int("warmup_epochs")
        guard warmupEpochs >= 0 else { throw PluginError.invalidArgument("\(Self.id): warmup_epochs must be >= 0 (got \(warmupEpochs))") }
        partialChannels = try params.int("partial_channels")
        guard partialChannels >= 1 else { throw PluginError.invalidArgument("\(Self.id): partial_channels must be >= 1 (got \(partialChannels)); the paper uses 4 (PC-DARTS)") }
        edgeNormalization = try params.bool("edge_normalization")
    }

    func epochBegin(state: RunState) throws {
        if !pruned { try prune(dryRun: state.isDryRun) }
    }

    func planStep(state: RunState) throws -> StepPlan {
        if !pruned { try prune(dryRun: state.isDryRun) }
        return state.epoch < warmupEpochs ? StepPlan(.weightsOnly) : StepPlan(.bilevel)
    }

    /// Format 1: whether the pruning ran (it runs once: a resumed search must not prune again),
    /// what it pruned, in order, and the fraction left.
    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.bool(pruned); w.double(fraction)
        w.ints(removed.flatMap { [$0.type, $0.edge, $0.op] })
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let pruned = try r.bool("pruned flag"), fraction = try r.double("fraction")
        let flat = try r.ints("removed candidates")
        try r.finish()
        guard flat.count % 3 == 0, fraction.isFinite, fraction >= 0, fraction <= 1 else {
            throw PluginError.invalidArgument("\(Self.id): saved state holds \(flat.count) numbers for (type, edge, op) triples and fraction \(fraction)")
        }
        self.pruned = pruned; self.fraction = fraction
        removed = stride(from: 0, to: flat.count, by: 3).map { Candidate(type: flat[$0], edge: flat[$0 + 1], op: flat[$0 + 2]) }
    }

    /// Algorithm 1 or the random mask, on both cell types.
    func prune(dryRun: Bool) throws {
        pruned = true
        let ranker = try ZeroShotRanker(host: host, batches: batches, repeats: repeats, who: Self.id)
        ranker.dryRun = dryRun
        let k = try Double(host.search!.value("space.partial_channels"))
        guard Int(k) == partialChannels, (try host.search!.value("space.edge_normalization") != 0) == edgeNormalization else {
            throw PluginError.invalidArgument("\(Self.id): asked for partial_channels \(partialChannels), edge_normalization \(edgeNormalization) but the host's supernet has \(Int(k)), \(try host.search!.value("space.edge_normalization") != 0)")
        }
        let search = ranker.search
        var ops: [[Int]] = []   // active candidates per (type, edge), index type·edges + edge
        for t in 0..<2 { for e in 0..<ranker.info.edges { ops.append(try ranker.active(type: t, edge: e)) } }
        guard ops.allSatisfy({ !$0.isEmpty }) else {
            throw PluginError.invalidArgument("\(Self.id): an edge has no active candidate before pruning")
        }
        let original = ops.map { log(Double($0.count)) }.reduce(0, +)
        func currentFraction() -> Double { exp(ops.map { log(Double($0.count)) }.reduce(0, +) - original) }
        func remove(_ c: Candidate) throws {
            try search.setOpState(cellType: c.type, edge: c.edge, op: c.op, pruneState)
            ops[c.type * ranker.info.edges + c.edge].removeAll { $0 == c.op }
            removed.append(c)
        }
        let edges = ranker.info.edges
        if random {
            for t in 0..<2 {
                for e in 0..<edges {
                    let here = ops[t * edges + e]
                    var keep = try here.filter { _ in try host.randomUniform() < xi }
                    if keep.isEmpty { keep = [here[min(here.count - 1, Int(try host.randomUniform() * Double(here.count)))]] }
                    for o in here where !keep.contains(o) { try remove(Candidate(type: t, edge: e, op: o)) }
                }
            }
        } else {
            if dryRun { _ = try ranker.score(seed: 0) }   // the ranking phase's peak: the whole space scored once
            var round = 0
            while currentFraction() > xi {
                let prunable = (0..<(2 * edges)).filter { ops[$0].count > 1 }
                if prunable.isEmpty { break }
                round += 1
                var lowest: [(Candidate, Double)] = []
                if dryRun {
                    lowest = prunable.map { (Candidate(type: $0 / edges, edge: $0 % edges, op: ops[$0][0]), 0) }
                } else {
                    let groups = prunable.flatMap { i in ops[i].map { [Candidate(type: i / edges, edge: i % edges, op: $0)] } }
                    let s = try ranker.importance(of: groups, seeds: try ranker.seeds())
                    var best: [Int: (Candidate, Double)] = [:]
                    for (g, v) in zip(groups, s) {
                        let key = g[0].type * edges + g[0].edge
                        if best[key] == nil || v < best[key]!.1 { best[key] = (g[0], v) }
                    }
                    lowest = prunable.map { best[$0]! }
                }
                if perOp { lowest.sort { $0.1 < $1.1 } }
                for (c, s) in lowest {
                    if perOp && currentFraction() <= xi { break }
                    try remove(c)
                    if !dryRun { host.log("\(Self.id): round \(round): removed \(ranker.names[c.op]) from the \(c.description) (importance \(s))") }
                }
            }
        }
        fraction = currentFraction()
        if !dryRun {
            host.log("\(Self.id): \(random ? "random mask" : "zero-shot pruning (\(ranker.passes) forward passes)") removed \(removed.count) ops; remaining architectures \(fraction) of the original (xi \(xi)); per edge: "
                     + (0..<(2 * edges)).map { i in "\(i < edges ? "n" : "r")\(i % edges)=[\(ops[i].map { ranker.names[$0] }.joined(separator: ","))]" }.joined(separator: " "))
        }
    }
}

/// The `prune_state` parameter: removed (default) or masked.
func pruneStateParam(_ params: ParamValues, _ who: String) throws -> SearchServices.OpState {
    let s = try params.string("prune_state")
    switch s {
    case "removed": return .removed
    case "masked": return .masked
    default: throw PluginError.invalidArgument("\(who): prune_state must be 'removed' (parameters freed) or 'masked' (kept, may be restored) (got '\(s)')")
    }
}
