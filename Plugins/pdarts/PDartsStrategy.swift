// espalier.strategy.pdarts/1: Progressive DARTS (Chen et al., ICCV 2019). The search runs in
// stages; stage s trains a supernet of stage_cells[s] cells (first-order bilevel DARTS steps
// after warmup_epochs[s] weight-only epochs) with dropout on skip_connect outputs. At the end of
// stage s every edge keeps its stage_ops[s] candidates of highest softmax weight (the others are
// removed for good through set_op_state(ES_OP_REMOVED); in the last stage `none` always goes),
// and the host rebuilds the supernet with stage_cells[s+1] cells through `grow` (fresh weights;
// α and op states are kept). `derive` is the DARTS rule on the last stage's weights plus the
// skip-connect limit in the normal cell: while more than skip_limit kept edges choose
// skip_connect, the weakest of them loses its skip_connect (its weight becomes 0) and the cell is
// derived again, so that edge falls back to its next-best op or gives way to another edge.
// Facts from the authors' code (chenxin061/pdarts, train_search.py): ops kept 8 → 5 → 3 → 1 by
// the lowest softmax (`get_min_k`, `get_min_k_no_zero` in the last stage), skip dropout per stage
// decaying as rate·(E−e−1)/E during warm-up and rate·exp(−0.2·(e−warm-up)) after it, the limit
// by `delete_min_sk_prob` / `keep_1_on` / `keep_2_branches`. Not here: the authors' fresh α per
// stage (this host keeps α across stages) and their per-stage restart of the learning rate.
// Saved state (format 1): the last stage's weights before its pruning (what `derive` ranks); the
// stage and its progress follow from the epoch, and the cells and pruned ops are the host's.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class PDartsStrategy: DerivingStrategy, StatefulComponent {
    static let id = "espalier.strategy.pdarts/1"

    private let host: PluginHost
    private let stageCells: [Int]
    private let stageOps: [Int]
    /// Epochs per stage as given (one value or one per stage); nil = split the run's epochs evenly.
    private let stageEpochsGiven: [Int]?
    private let warmupGiven: [Int]
    private let skipDropout: [Double]
    private let decayingDropout: Bool
    private let skipLimit: Int
    private let secondOrder: Bool
    /// Mixing weights of the last stage just before its final pruning, per cell type (edges·ops),
    /// removed candidates 0: what `derive` ranks, as the code ranks with the stage-3 softmax.
    private var finalWeights: [[Double]]? = nil

    var stageCount: Int { stageCells.count }

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        func ints(_ name: String, min lower: Int) throws -> [Int] {
            let text = try params.string(name)
            let items = text.split(separator: ",").map { $0.trimmedOfSpaces }
            guard !items.isEmpty else { throw PluginError.invalidArgument("\(Self.id): \(name) is empty; give comma-separated integers, e.g. \"5,11,17\"") }
            return try items.map { s in
                guard let v = Int(s), v >= lower else {
                    throw PluginError.invalidArgument("\(Self.id): \(name) = \"\(text)\": '\(s)' is not an integer >= \(lower)")
                }
                return v
            }
        }
        stageCells = try ints("stage_cells", min: 1)
        stageOps = try ints("stage_ops", min: 1)
        let s = stageCells.count
        guard stageOps.count == s else {
            throw PluginError.invalidArgument("\(Self.id): stage_ops \(stageOps) has \(stageOps.count) values but stage_cells \(stageCells) has \(s); give one per stage")
        }
        for i in 1..<max(s, 1) where stageOps[i] > stageOps[i - 1] {
            throw PluginError.invalidArgument("\(Self.id): stage_ops \(stageOps) grows from stage \(i) to \(i + 1); ops removed for good cannot come back")
        }
        let epochsText = try params.string("stage_epochs").trimmedOfSpaces
        if epochsText.isEmpty || epochsText == "auto" {
            stageEpochsGiven = nil
        } else {
            let e = try ints("stage_epochs", min: 1)
            guard e.count == 1 || e.count == s else {
                throw PluginError.invalidArgument("\(Self.id): stage_epochs \(e) needs one value or \(s) (one per stage)")
            }
            stageEpochsGiven = e.count == 1 ? Array(repeating: e[0], count: s) : e
        }
        let w = try ints("warmup_epochs", min: 0)
        guard w.count == 1 || w.count == s else {
            throw PluginError.invalidArgument("\(Self.id): warmup_epochs \(w) needs one value or \(s) (one per stage)")
        }
        warmupGiven = w.count == 1 ? Array(repeating: w[0], count: s) : w
        let dropText = try params.string("skip_dropout")
        skipDropout = try dropText.split(separator: ",").map { item in
            let t = item.trimmedOfSpaces
            guard let v = Double(t), v >= 0, v < 1 else {
                throw PluginError.invalidArgument("\(Self.id): skip_dropout = \"\(dropText)\": '\(t)' is not a probability in [0, 1)")
            }
            return v
        }
        guard skipDropout.count == s || skipDropout.count == 1 else {
            throw PluginError.invalidArgument("\(Self.id): skip_dropout \(skipDropout) has \(skipDropout.count) values for \(s) stage(s); give one value or one per stage, e.g. strategy.skip_dropout=\(skipDropout.prefix(s).map { "\($0)" }.joined(separator: ","))")
        }
        let schedule = try params.string("skip_dropout_schedule")
        switch schedule {
        case "decay": decayingDropout = true
        case "constant": decayingDropout = false
        default: throw PluginError.invalidArgument("\(Self.id): skip_dropout_schedule must be 'decay' or 'constant' (got '\(schedule)')")
        }
        skipLimit = try params.int("skip_limit")
        guard skipLimit >= 0 else { throw PluginError.invalidArgument("\(Self.id): skip_limit must be >= 0 (got \(skipLimit))") }
        let order = try params.string("order")
        switch order {
        case "first": secondOrder = false
        case "second": secondOrder = true
        default: throw PluginError.invalidArgument("\(Self.id): order must be 'first' or 'second' (got '\(order)')")
        }
    }

    private func services() throws -> SearchServices {
        guard let s = host.search else {
            throw PluginError.unsupported("\(Self.id) acts through the search services; it runs only inside a search")
        }
        return s
    }

    // MARK: Stages

    /// Epochs of each stage for a run of `total` epochs.
    func stageEpochs(total: Int) throws -> [Int] {
        if let given = stageEpochsGiven { return given }
        guard total >= stageCount else {
            throw PluginError.invalidArgument("\(Self.id): \(stageCount) stages need at least \(stageCount) epochs, the run has \(total); "
                                              + "raise --epochs or set strategy.stage_epochs")
        }
        // Even split; the remainder goes to the last stages.
        let base = total / stageCount, extra = total % stageCount
        return (0..<stageCount).map { base + ($0 >= stageCount - extra ? 1 : 0) }
    }

    /// The stage of `epoch`, the epoch within it and the stage's length; nil past the last stage.
    func locate(_ state: RunState) throws -> (stage: Int, epochInStage: Int, length: Int)? {
        var start = 0
        for (s, n) in try stageEpochs(total: state.totalEpochs).enumerated() {
            if state.epoch < start + n { return (s, state.epoch - start, n) }
            start += n
        }
        return nil
    }

    /// P-DARTS's skip-connect dropout in epoch `e` of a stage of `length` epochs.
    func dropout(stage s: Int, epochInStage e: Int, length: Int) -> Double {
        let rate = skipDropout.count == 1 ? skipDropout[0] : skipDropout[s]
        guard decayingDropout else { return rate }
        let warm = warmupGiven[s]
        if e < warm { return rate * Double(length - e - 1) / Double(length) }
        return rate * exp(-0.2 * Double(e - warm))
    }

    // MARK: Hooks

    func planStep(state: RunState) throws -> StepPlan {
        guard let (s, e, _) = try locate(state) else { return StepPlan(.weightsOnly) }
        if e < warmupGiven[s] { return StepPlan(.weightsOnly) }
        return StepPlan(.bilevel, secondOrder: secondOrder)
    }

    func epochBegin(state: RunState) throws {
        guard let (s, e, n) = try locate(state) else { return }
        let search = try services()
        if e == 0 {
            let cells = try search.spaceInfo().cells
            if cells != stageCells[s] {
                host.log("\(Self.id): stage \(s + 1)/\(stageCount) searches \(stageCells[s]) cells; the supernet has \(cells), growing it")
                try search.grow(cells: stageCells[s])
            }
        }
        if skipDropout.contains(where: { $0 > 0 }) {
            try search.setValue("skip_dropout", dropout(stage: s, epochInStage: e, length: n))
        }
    }

    func epochEnd(state: RunState, metrics: EpochMetrics) throws -> Bool {
        guard let (s, e, n) = try locate(state) else { return true }
        guard e == n - 1 else { return false }
        let search = try services()
        let last = s == stageCount - 1
        try prune(search, keep: stageOps[s], lastStage: last)
        if last {
            host.log("\(Self.id): stage \(s + 1)/\(stageCount) done: \(stageOps[s]) op(s) per edge left; the search ends")
            return true
        }
        host.log("\(Self.id): stage \(s + 1)/\(stageCount) done: \(stageOps[s]) ops per edge left; growing to \(stageCells[s + 1]) cells")
        try search.grow(cells: stageCells[s + 1])
        return false
    }

    /// Softmax of α over the candidates not removed, per edge (removed: 0), (edges·ops).
    private func aliveWeights(_ search: SearchServices, cellType t: Int, _ info: SearchServices.SpaceInfo) throws -> (weights: [Double], alive: [Bool]) {
        let logits = try search.archView(cellType: t).logits
        var alive = [Bool](repeating: true, count: info.edges * info.ops)
        for e in 0..<info.edges {
            for o in 0..<info.ops { alive[e * info.ops + o] = try search.opState(cellType: t, edge: e, op: o) != .removed }
        }
        guard let a = logits.raw.data else { return ([Double](repeating: 0, count: alive.count), alive) }
        var w = [Double](repeating: 0, count: alive.count)
        for e in 0..<info.edges {
            let idx = (0..<info.ops).map { e * info.ops + $0 }.filter { alive[$0] }
            guard let m = idx.map({ Double(a[$0]) }).max() else { continue }
            var sum = 0.0
            for i in idx { w[i] = exp(Double(a[i]) - m); sum += w[i] }
            for i in idx { w[i] /= sum }
        }
        return (w, alive)
    }

    /// Removes the lowest-weight candidates of every edge until `keep` remain (in the last stage
    /// `none` goes first); never removes an edge's last candidate.
    private func prune(_ search: SearchServices, keep: Int, lastStage: Bool) throws {
        let info = try search.spaceInfo()
        let names = (0..<info.ops).map { search.opName($0).map(shortName) ?? "" }
        if lastStage { finalWeights = [] }
        for t in 0..<info.cellTypes {
            let (w, alive) = try aliveWeights(search, cellType: t, info)
            if lastStage {
                finalWeights?.append(w.enumerated().map { names[$0.offset % info.ops] == "none" ? 0 : $0.element })
            }
            for e in 0..<info.edges {
                var left = (0..<info.ops).filter { alive[e * info.ops + $0] }
                // Lowest weight first; ties: the earlier op goes first (numpy argmin).
                let order = left.sorted { a, b in w[e * info.ops + a] != w[e * info.ops + b] ? w[e * info.ops + a] < w[e * info.ops + b] : a < b }
                // The last stage never keeps `none`, however many ops it keeps (the code's get_min_k_no_zero).
                if lastStage, let z = left.first(where: { names[$0] == "none" }), left.count > 1 {
                    try search.setOpState(cellType: t, edge: e, op: z, .removed)
                    left.removeAll { $0 == z }
                }
                for o in order where left.contains(o) && left.count > keep && left.count > 1 {
                    try search.setOpState(cellType: t, edge: e, op: o, .removed)
                    left.removeAll { $0 == o }
                }
            }
        }
    }

    // MARK: Saved state

    /// Format 1: has-weights flag, then per cell type the final weights.
    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.bool(finalWeights != nil)
        if let f = finalWeights { w.int(f.count); for t in f { w.doubles(t) } }
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        var loaded: [[Double]]? = nil
        if try r.bool("has-final-weights flag") {
            loaded = try (0..<r.count("cell types", itemBytes: 8)).map { _ in try r.doubles("final weights") }
        }
        try r.finish()
        finalWeights = loaded
    }

    // MARK: Derivation

    func derive(state: RunState) throws -> String {
        let search = try services()
        let info = try search.spaceInfo()
        let ids = (0..<info.ops).map { search.opName($0) ?? "op\($0)" }
        let names = ids.map(shortName)
        var cells: [[(op: Int, input: Int)]] = []
        for t in 0..<min(info.cellTypes, 2) {
            let weights: [Double]
            if let f = finalWeights, t < f.count, f[t].count == info.edges * info.ops {
                weights = f[t]
            } else {
                weights = try aliveWeights(search, cellType: t, info).weights
            }
            let limit = t == 0 ? skipLimit : nil
            cells.append(deriveCell(weights: weights, names: names, edges: info.edges, nodes: info.nodes, skipLimit: limit))
        }
        if cells.count == 1 { cells.append(cells[0]) }
        func edgesJSON(_ c: [(op: Int, input: Int)]) -> String {
            "[" + c.map { "[\(jsonString(names[$0.op])), \($0.input)]" }.joined(separator: ", ") + "]"
        }
        let concat = "[" + (2..<(2 + info.nodes)).map(String.init).joined(separator: ", ") + "]"
        let opIDs = "{" + zip(names, ids).map { "\(jsonString($0)): \(jsonString($1))" }.joined(separator: ", ") + "}"
        return "{\"normal\": \(edgesJSON(cells[0])), \"normal_concat\": \(concat), "
            + "\"reduce\": \(edgesJSON(cells[1])), \"reduce_concat\": \(concat), \"op_ids\": \(opIDs)}"
    }

    /// The DARTS rule on one cell type's weights (edges·ops, node by node: node i has 2+i edges),
    /// candidates other than `none` with a weight > 0, then the skip-connect limit if given.
    /// Returns two (op, input) per node, strongest first.
    func deriveCell(weights w0: [Double], names: [String], edges: Int, nodes: Int, skipLimit: Int?) -> [(op: Int, input: Int)] {
        let ops = names.count
        var w = w0
        let skip = names.firstIndex(of: "skip_connect")
        func candidates(_ e: Int) -> [Int] {
            let c = (0..<ops).filter { names[$0] != "none" && w[e * ops + $0] > 0 }
            return c.isEmpty ? (0..<ops).filter { names[$0] != "none" } : c
        }
        // Argmax; ties keep the earlier op.
        func best(_ e: Int) -> Int {
            let c = candidates(e)
            var k = c.first ?? 0
            for o in c.dropFirst() where w[e * ops + o] > w[e * ops + k] { k = o }
            return k
        }
        func parse() -> [(op: Int, input: Int, edge: Int)] {
            var gene: [(op: Int, input: Int, edge: Int)] = []
            var start = 0
            for i in 0..<nodes {
                let incoming = 2 + i
                guard start + incoming <= edges else { break }
                let strength = (0..<incoming).map { w[(start + $0) * ops + best(start + $0)] }
                let ranked = (0..<incoming).sorted { a, b in strength[a] != strength[b] ? strength[a] > strength[b] : a < b }
                for j in ranked.prefix(2) { gene.append((best(start + j), j, start + j)) }
                start += incoming
            }
            return gene
        }
        var gene = parse()
        if let limit = skipLimit, let skip {
            while gene.filter({ $0.op == skip }).count > limit {
                // The weakest skip_connect among the kept edges that have another op to fall back to.
                let deletable = gene.filter { g in g.op == skip && candidates(g.edge).contains { $0 != skip } }
                guard let weakest = deletable.min(by: { w[$0.edge * ops + skip] < w[$1.edge * ops + skip] }) else {
                    host.log("\(Self.id): the normal cell keeps \(gene.filter { $0.op == skip }.count) skip_connects (limit \(limit)): "
                             + "their edges have no other op left", level: .warning)
                    break
                }
                w[weakest.edge * ops + skip] = 0
                gene = parse()
            }
        }
        return gene.map { ($0.op, $0.input) }
    }
}

/// Short name of a component id: "espalier.op.sep_conv_3x3/1" → "sep_conv_3x3".
func shortName(_ id: String) -> String {
    let base = id.split(separator: "/").first.map(String.init) ?? id
    return String(base.split(separator: ".").last ?? Substring(base))
}

extension StringProtocol {
    /// Without leading and trailing spaces (no Foundation in plugins).
    var trimmedOfSpaces: String {
        var chars = Substring(self)
        while chars.first == " " { chars = chars.dropFirst() }
        while chars.last == " " { chars = chars.dropLast() }
        return String(chars)
    }
}

/// A JSON string literal.
func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default:
            if u.value < 0x20 { out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16) }
            else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}
