// espalier.regularizer.compression/1: Bonsai-Net's memory-compression loss. For each cell type t
// (the host's gate-weight targets "gate/normal/memory", "gate/reduce/memory": the gate's weights
// g (edges, ops) of this forward and the accountant's bytes s per candidate — parameters,
// gradients and momentum plus the activations its forward keeps for backward, summed over the
// cells of the type; masked and removed candidates cost 0):
//     c_t = Σ_j s_j·g_j / Σ_j s_j,      loss = λ · ‖c_target − c‖₂   (over the cell types),
//     ∂loss/∂g_j (type t) = λ · (c_t − c_target) / ‖c − c_target‖ · s_j / Σ s.
// With the saw-wave gate g is G + S, so c is the fraction of the candidates' bytes still running.
// λ starts at lambda (paper: 0.01) and doubles every double_every epochs (GUIDE: the authors' code
// 8, paper 16) in which the target was not met (max over cell types of c_t > c_target at the
// epoch's last loss call); setting a new target starts again from lambda. set_value("target")
// moves the target, set_value("lambda") fixes λ from then on (0 switches the term off: Bonsai's
// last section trains without it), set_value("lambda_schedule") = 1 returns to the doubling.
// "/flops" targets and other kinds are ignored. In the hyper-connected space the host's targets are
// per cell, "gate/cellI/memory" (its ops) and "gate/cellI/inputs/memory" (its inter-cell inputs):
// both are one cell's connections, so they make one c_i together (keys: the name without
// "/memory" and "/inputs").
// Saved state (format 1): the target, the fixed λ if any, the unmet-epoch count and the last loss
// call's epoch and verdict, so that λ's doubling goes on across a resume.

import EspalierPluginKit

final class CompressionRegularizer: LossRegularizer, StatefulComponent {
    static let id = "espalier.regularizer.compression/1"

    private let lambda0: Double
    private let doubleEvery: Int
    private(set) var target: Double
    private var lambdaOverride: Double? = nil
    /// Epochs, since the target was last set, that ended with the target unmet.
    private var unmetEpochs = 0
    /// The epoch of the last loss call and whether the target was unmet then.
    private var lastEpoch: Int? = nil
    private var lastUnmet = false
    /// Compression per target name at the last loss call (for logs and tests).
    private(set) var lastCompression: [String: Double] = [:]

    init(host: PluginHost, params: ParamValues) throws {
        lambda0 = try params.double("lambda")
        guard lambda0.isFinite, lambda0 >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): lambda must be a finite number >= 0 (got \(lambda0))")
        }
        doubleEvery = try params.int("double_every")
        guard doubleEvery >= 1 else { throw PluginError.invalidArgument("\(Self.id): double_every must be >= 1 epoch (got \(doubleEvery))") }
        target = try params.double("target")
        try Self.checkTarget(target)
    }

    static func checkTarget(_ t: Double) throws {
        guard t.isFinite, t >= 0, t <= 1 else {
            throw PluginError.invalidArgument("\(id): target must be a compression in [0, 1] (the fraction of the candidates' bytes kept; got \(t))")
        }
    }

    /// λ now: the fixed value if one was set, else lambda · 2^⌊unmet epochs / double_every⌋.
    var currentLambda: Double {
        lambdaOverride ?? lambda0 * Double(1 << min(unmetEpochs / doubleEvery, 40))
    }

    func setValue(_ name: String, _ value: Double) throws {
        switch name {
        case "target":
            try Self.checkTarget(value)
            target = value
            unmetEpochs = 0
            lastUnmet = false
        case "lambda":
            guard value.isFinite, value >= 0 else {
                throw PluginError.invalidArgument("\(Self.id): lambda must be a finite number >= 0 (got \(value))")
            }
            lambdaOverride = value
        case "lambda_schedule":
            guard value == 1 else { throw PluginError.invalidArgument("\(Self.id): lambda_schedule takes 1 (back to the doubling schedule; got \(value))") }
            lambdaOverride = nil
        default:
            throw PluginError.unsupported("\(Self.id) has the settable values 'target', 'lambda' and 'lambda_schedule' (got '\(name)')")
        }
    }

    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.double(target)
        w.bool(lambdaOverride != nil); w.double(lambdaOverride ?? 0)
        w.int(unmetEpochs)
        w.bool(lastEpoch != nil); w.int(lastEpoch ?? 0)
        w.bool(lastUnmet)
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let target = try r.double("target")
        let hasOverride = try r.bool("has-lambda flag"), override = try r.double("lambda")
        let unmet = try r.int("unmet epochs")
        let hasLast = try r.bool("has-last-epoch flag"), last = try r.int("last epoch")
        let lastUnmet = try r.bool("last verdict")
        try r.finish()
        try Self.checkTarget(target)
        guard unmet >= 0, !hasOverride || (override.isFinite && override >= 0) else {
            throw PluginError.invalidArgument("\(Self.id): saved state holds unmet epochs \(unmet) and lambda \(override)")
        }
        self.target = target; lambdaOverride = hasOverride ? override : nil
        unmetEpochs = unmet; lastEpoch = hasLast ? last : nil; self.lastUnmet = lastUnmet
    }

    func loss(state: RunState, targets: [RegularizerTarget]) throws -> Double {
        // The doubling: count the previous epoch if it ended unmet.
        if let last = lastEpoch, state.epoch != last, !state.isDryRun {
            if lastUnmet { unmetEpochs += max(1, state.epoch - last) }
        }
        lastEpoch = state.epoch
        // Per cell type (hyper-connected: per cell, its ops' and its inter-cell inputs' targets
        // together, "gate/cellI/memory" + "gate/cellI/inputs/memory"): c_t, Σ s, and where its gradient goes.
        var groups: [String: (num: Double, den: Double, parts: [(g: TensorView, s: TensorView, grad: TensorView)])] = [:]
        var order: [String] = []
        for t in targets where t.kind == .gateWeights && t.name.hasSuffix("/memory") {
            guard let costs = t.costs else { throw PluginError.invalidArgument("\(Self.id): target '\(t.name)' has no costs") }
            var key = String(t.name.dropLast("/memory".count))
            if key.hasSuffix("/inputs") { key = String(key.dropLast("/inputs".count)) }
            for (p, g) in t.values.enumerated() {
                try g.requireSameShape(as: costs[p], "\(Self.id): costs of '\(t.name)'")
                guard let gw = g.data, let sw = costs[p].data else { continue }   // dry run
                var num = 0.0, den = 0.0
                for j in 0..<g.count where gw[j].isFinite {
                    num += Double(sw[j]) * Double(gw[j])
                    den += Double(sw[j])
                }
                if groups[key] == nil { order.append(key); groups[key] = (0, 0, []) }
                groups[key]!.num += num
                groups[key]!.den += den
                groups[key]!.parts.append((g, costs[p], t.grads[p]))
            }
        }
        let parts = order.compactMap { k in groups[k].flatMap { $0.den > 0 ? (name: k, c: $0.num / $0.den, total: $0.den, parts: $0.parts) : nil } }
        guard !parts.isEmpty else { return 0 }
        lastCompression = Dictionary(parts.map { ($0.name, $0.c) }, uniquingKeysWith: { a, _ in a })
        lastUnmet = parts.contains { $0.c > target }
        let norm = parts.reduce(0.0) { $0 + ($1.c - target) * ($1.c - target) }.squareRoot()
        let lambda = currentLambda
        guard norm > 0, lambda > 0 else { return lambda * norm }
        for p in parts {
            let scale = lambda * (p.c - target) / norm / p.total
            for q in p.parts {
                guard let gr = q.grad.data, let sw = q.s.data else { continue }
                try q.g.requireSameShape(as: q.grad, "\(Self.id): gradient of '\(p.name)'")
                for j in 0..<q.g.count { gr[j] += Float(scale * Double(sw[j])) }
            }
        }
        return lambda * norm
    }
}

enum BonsaiComponents {
    static let compression = Component.regularizer(
        CompressionRegularizer.self, id: CompressionRegularizer.id,
        summary: "Bonsai-Net memory compression: λ‖c_target − c‖₂ with c_t = Σ s_j g_j / Σ s_j per cell type (s = the accountant's bytes per candidate); "
            + "λ doubles every double_every epochs while the target is unmet",
        params: [
            .double("target", default: 1, doc: "c_target: the fraction of the candidates' bytes to keep (the Bonsai strategy sets it per section)", min: 0, max: 1),
            .double("lambda", default: 0.01, doc: "λ at the start and after each new target (paper: 0.01)", min: 0),
            .int("double_every", default: 8, doc: "λ doubles after this many epochs with the target unmet (authors' code: 8; paper: 16)", min: 1),
        ],
        targets: .gateWeights)
}
