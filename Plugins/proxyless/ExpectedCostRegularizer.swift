// espalier.regularizer.expected-cost/1: ProxylessNAS's expected-cost term on the gate's mixing
// weights. E = Σ_targets Σ_edges Σ_ops w·cost over the gate-weight targets of the chosen cost
// ("gate/normal/memory", "gate/reduce/memory" or the "/flops" pair; the host fills `costs` with
// each candidate's accountant bytes or FLOPs summed over the cells of the type). The additive
// form R = λ(E − ref)/ref, ∂R/∂w = λ·cost/ref, is what the ABI can express. Not here: the
// multiplicative form CE·a·(log E / log ref)^b, which scales the cross-entropy itself: the
// regularizer would need the step's CE value and a way to scale CE's gradient, which the ABI
// does not give it (it only adds its own term); `form=mul` is refused with that explanation.
// Saved state (format 1): the reference cost once the first call fixed it.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class ExpectedCostRegularizer: LossRegularizer, StatefulComponent {
    static let id = "espalier.regularizer.expected-cost/1"

    /// "memory" or "flops": which gate-weight targets count (by the end of their name).
    let cost: String
    private(set) var lambda: Double
    /// The reference cost; nil until the first real call when the parameter is 0.
    private(set) var ref: Double?

    init(host: PluginHost, params: ParamValues) throws {
        cost = try params.string("cost")
        guard cost == "memory" || cost == "flops" else {
            throw PluginError.invalidArgument("\(Self.id): cost must be 'memory' or 'flops' (got '\(cost)')")
        }
        let form = try params.string("form")
        switch form {
        case "add": break
        case "mul":
            throw PluginError.invalidArgument("\(Self.id): form 'mul' (CE·a·(log E/log ref)^b) needs the step's cross-entropy and a scale on its gradient, which a regularizer does not get through ABI v1 (it only adds its own term); use form=add (λ(E−ref)/ref)")
        default:
            throw PluginError.invalidArgument("\(Self.id): form must be 'add' or 'mul' (got '\(form)')")
        }
        lambda = try params.double("lambda")
        guard lambda.isFinite, lambda >= 0 else { throw PluginError.invalidArgument("\(Self.id): lambda must be finite and >= 0 (got \(lambda))") }
        let r = try params.double("ref")
        guard r.isFinite, r >= 0 else { throw PluginError.invalidArgument("\(Self.id): ref must be finite and >= 0, 0 = the cost at the first step (got \(r))") }
        ref = r > 0 ? r : nil
    }

    /// Format 1: the reference cost once fixed (the first real call's, when the parameter is 0).
    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.bool(ref != nil); w.double(ref ?? 0)
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let has = try r.bool("has-ref flag"), value = try r.double("ref")
        try r.finish()
        guard !has || (value.isFinite && value > 0) else { throw PluginError.invalidArgument("\(Self.id): saved state: ref \(value) is not > 0") }
        ref = has ? value : ref
    }

    func loss(state: RunState, targets: [RegularizerTarget]) throws -> Double {
        let mine = targets.filter { $0.kind == .gateWeights && $0.name.hasSuffix("/" + cost) }
        guard !mine.isEmpty else {
            throw PluginError.invalidArgument("\(Self.id): no gate-weight target ends in '/\(cost)' (got \(targets.map(\.name))); the host gives gate/TYPE/memory and gate/TYPE/flops")
        }
        // E = Σ w·cost over every part of every matching target.
        var e = 0.0
        for t in mine {
            guard let costs = t.costs, costs.count == t.values.count else {
                throw PluginError.invalidArgument("\(Self.id): target \(t.name) has no costs for its \(t.values.count) parts")
            }
            for (v, c) in zip(t.values, costs) {
                try v.requireSameShape(as: c, "\(t.name) costs")
                guard let w = v.data, let k = c.data else { return 0 }   // dry run
                for i in 0..<v.count { e += Double(w[i]) * Double(k[i]) }
            }
        }
        if ref == nil {
            guard e > 0 else { throw PluginError.invalidArgument("\(Self.id): the expected \(cost) at the first step is 0, so it cannot be the reference; set ref (> 0)") }
            ref = e
        }
        let r = ref!
        // ∂R/∂w = λ·cost/ref, added into each part's gradient.
        let scale = lambda / r
        for t in mine {
            for (g, c) in zip(t.grads, t.costs!) {
                guard let gd = g.data, let k = c.data else { continue }
                for i in 0..<g.count { gd[i] += Float(scale * Double(k[i])) }
            }
        }
        return lambda * (e - r) / r
    }

    func setValue(_ name: String, _ value: Double) throws {
        guard value.isFinite, value >= 0 else { throw PluginError.invalidArgument("\(Self.id): \(name) must be finite and >= 0 (got \(value))") }
        switch name {
        case "lambda": lambda = value
        case "ref": ref = value > 0 ? value : nil
        default: throw PluginError.unsupported("\(Self.id) has settable values 'lambda' and 'ref' (got '\(name)')")
        }
    }
}
