// espalier.strategy.gsparsity/1: GSparsity (Chatzimichailidis et al.): one-shot NAS as group
// pruning. No architecture parameters (ES_REQUIRES_NO_ARCH_PARAMS): the host's supernet sums every
// op of an edge with weight 1, and with `scale_parameter_free` each parameter-free op (pools,
// skip_connect) multiplies its output by a learnable scale (init 1, clamped to [0, 1]). Every
// step is weights only; the sparsity comes from the ProxSGD regularizer
// (espalier.regularizer.proxsgd/1) on the weight groups (op k on edge e in every cell of a type).
// At the end of the last epoch every group with ‖θ_g‖ ≤ `threshold` is removed for good
// (set_op_state ES_OP_REMOVED), and `derive` keeps every op whose group survives — any number
// per edge, any number of edges per node (genotype fields normal_node_sizes/reduce_node_sizes).
// The group norms are the host's search values "group_norm/{normal,reduce}/edgeE/OP".
// Sweep over μ: with `target_sparsity` > 0 the strategy sets the regularizer's μ (`mu_start` at
// the first epoch) and after each epoch moves it by bisection towards the target fraction of
// groups at or below the threshold: doubling μ until the sparsity reaches the target, then
// halving the bracket [μ_lo, μ_hi] (the paper: "this can be done in a similar fashion as
// bisection, as the larger μ is, the fewer nonzero groups there are").
// Saved state (format 1): μ and its bisection bracket, so that a resumed sweep goes on where it was.

import EspalierPluginKit

final class GSparsityStrategy: DerivingStrategy, StatefulComponent {
    static let id = "espalier.strategy.gsparsity/1"

    private let host: PluginHost
    let threshold: Double
    let prune: Bool
    let targetSparsity: Double
    let tolerance: Double
    /// The sweep's μ and its bracket.
    private(set) var mu: Double
    private var muLow = 0.0, muHigh: Double? = nil

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        threshold = try params.double("threshold")
        prune = try params.bool("prune")
        targetSparsity = try params.double("target_sparsity")
        tolerance = try params.double("sparsity_tolerance")
        mu = try params.double("mu_start")
        guard threshold >= 0 else { throw PluginError.invalidArgument("\(Self.id): threshold must be >= 0 (got \(threshold))") }
        guard targetSparsity >= 0, targetSparsity < 1 else {
            throw PluginError.invalidArgument("\(Self.id): target_sparsity must be in [0, 1) (got \(targetSparsity)); 0 = no sweep")
        }
        guard mu > 0 else { throw PluginError.invalidArgument("\(Self.id): mu_start must be > 0 (got \(mu))") }
    }

    func planStep(state: RunState) throws -> StepPlan { StepPlan(.weightsOnly) }

    /// "espalier.op.sep_conv_3x3/1" → "sep_conv_3x3" (the host's op names are component ids).
    static func shortName(_ id: String) -> String {
        let base = id.split(separator: "/").first.map(String.init) ?? id
        return String(base.split(separator: ".").last ?? Substring(base))
    }

    func epochBegin(state: RunState) throws {
        if targetSparsity > 0, state.epoch == 0, !state.isDryRun { try search().setValue("regularizer.mu", mu) }
    }

    private func search() throws -> SearchServices {
        guard let s = host.search else { throw PluginError.unsupported("\(Self.id): no search is running") }
        return s
    }

    /// Every prunable group: (cell type, edge, op, ‖θ_g‖) for active candidates that have parameters
    /// (or a scale); ops without a group (`none`, unscaled parameter-free ops) are not listed.
    func groups() throws -> [(type: Int, edge: Int, op: Int, norm: Double)] {
        let s = try search()
        let info = try s.spaceInfo()
        let names = (0..<info.ops).map { s.opName($0).map(Self.shortName) ?? "op\($0)" }
        var out: [(Int, Int, Int, Double)] = []
        for t in 0..<info.cellTypes {
            for e in 0..<info.edges {
                for o in 0..<info.ops {
                    guard try s.opState(cellType: t, edge: e, op: o) == .active,
                          let norm = try? s.value("group_norm/\(t == 0 ? "normal" : "reduce")/edge\(e)/\(names[o])") else { continue }
                    out.append((t, e, o, norm))
                }
            }
        }
        return out
    }

    /// Fraction of groups at or below the threshold.
    func sparsity(_ g: [(type: Int, edge: Int, op: Int, norm: Double)]) -> Double {
        g.isEmpty ? 0 : Double(g.filter { $0.norm <= threshold }.count) / Double(g.count)
    }

    func epochEnd(state: RunState, metrics: EpochMetrics) throws -> Bool {
        if state.isDryRun { return false }
        let g = try groups()   // norms as of this epoch's derivation (the host publishes them when it derives)
        let s = sparsity(g)
        let last = state.epoch + 1 >= state.totalEpochs
        if targetSparsity > 0 && !last {
            if abs(s - targetSparsity) > tolerance {
                if s < targetSparsity { muLow = mu; mu = muHigh.map { ($0 + muLow) / 2 } ?? 2 * mu }
                else { muHigh = mu; mu = (muLow + mu) / 2 }
                try search().setValue("regularizer.mu", mu)
            }
            host.log("\(Self.id): epoch \(state.epoch + 1): sparsity \(s) (target \(targetSparsity)), μ → \(mu)")
        }
        if last && prune {
            let dead = g.filter { $0.norm <= threshold }
            for d in dead { try search().setOpState(cellType: d.type, edge: d.edge, op: d.op, .removed) }
            host.log("\(Self.id): pruned \(dead.count) of \(g.count) groups with ‖θ_g‖ ≤ \(threshold) (sparsity \(s))")
        }
        return false
    }

    /// Format 1: the sweep's μ and its bracket (μ also reaches the regularizer through the host's values).
    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.double(mu); w.double(muLow); w.bool(muHigh != nil); w.double(muHigh ?? 0)
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let mu = try r.double("mu"), low = try r.double("mu bracket low")
        let hasHigh = try r.bool("has-high flag"), high = try r.double("mu bracket high")
        try r.finish()
        guard mu > 0, mu.isFinite, low >= 0, low.isFinite, !hasHigh || high.isFinite else {
            throw PluginError.invalidArgument("\(Self.id): saved state holds mu \(mu) with bracket [\(low), \(hasHigh ? "\(high)" : "open")]")
        }
        self.mu = mu; muLow = low; muHigh = hasHigh ? high : nil
    }

    /// Every op whose group survives: active and above the threshold (ops without a group, such
    /// as parameter-free ops without a scale, always survive). JSON genotype with node sizes.
    func derive(state: RunState) throws -> String {
        let s = try search()
        let info = try s.spaceInfo()
        let ids = (0..<info.ops).map { s.opName($0) ?? "op\($0)" }
        let names = ids.map(Self.shortName)
        var json: [String] = []
        for (t, key) in ["normal", "reduce"].enumerated() where t < info.cellTypes {
            var edges: [String] = [], sizes: [Int] = []
            var e = 0
            for i in 0..<info.nodes {
                var size = 0
                for j in 0..<(2 + i) {
                    for o in 0..<info.ops where names[o] != "none" {
                        guard try s.opState(cellType: t, edge: e, op: o) == .active else { continue }
                        if let norm = try? s.value("group_norm/\(key)/edge\(e)/\(names[o])"), norm <= threshold { continue }
                        edges.append("[\"\(names[o])\", \(j)]")
                        size += 1
                    }
                    e += 1
                }
                sizes.append(size)
            }
            let concat = (2..<(2 + info.nodes)).map(String.init).joined(separator: ", ")
            json.append("\"\(key)\": [\(edges.joined(separator: ", "))], \"\(key)_concat\": [\(concat)], \"\(key)_node_sizes\": [\(sizes.map(String.init).joined(separator: ", "))]")
        }
        let opIDs = zip(names, ids).filter { $0.0 != "none" }.map { "\"\($0.0)\": \"\($0.1)\"" }.joined(separator: ", ")
        return "{" + json.joined(separator: ", ") + ", \"op_ids\": {\(opIDs)}}"
    }
}
