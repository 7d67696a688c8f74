// espalier.regularizer.figs-cost/1: FiGS's expected-cost term (§3.2, the "expected" form that
// penalises the distribution parameters π = σ(ν) rather than sampled masks).
// Targets (ES_TARGET_GATE_WEIGHTS, one per convolution, name ending in "/params", "/flops" or
// "/memory"): parts = the logits ν of the channel masks the convolution's cost depends on, costs =
// per-channel unit costs of the same shapes. The convolution's expected cost is the product over
// its parts of Σ_i c_i·π_i:
//   dense conv (in mask, out mask):   E = (Σ_i c_in,i π_in,i)·(Σ_j c_out,j π_out,j)   — π_out·Σπ_in, c = k²·(H·W for FLOPs)
//   depthwise conv (one mask):        E = Σ_i c_i π_i
// An unmasked side is a part with ν = +∞ (π = 1) and no gradient view.
// R = λ·Σ_t E_t;  ∂R/∂ν_p,i = λ·c_p,i·π_p,i(1 − π_p,i)·Π_{q≠p} S_q,  S_q = Σ_i c_q,i π_q,i.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class FigsCostRegularizer: LossRegularizer {
    static let id = "espalier.regularizer.figs-cost/1"
    static let costs = ["params", "flops", "memory"]

    let cost: String
    private(set) var lambda: Double

    init(host: PluginHost, params: ParamValues) throws {
        cost = try params.string("cost")
        guard Self.costs.contains(cost) else {
            throw PluginError.invalidArgument("\(Self.id): cost must be one of \(Self.costs.joined(separator: ", ")) (got '\(cost)')")
        }
        lambda = try params.double("lambda")
        guard lambda.isFinite, lambda >= 0 else { throw PluginError.invalidArgument("\(Self.id): lambda must be finite and >= 0 (got \(lambda))") }
    }

    @inline(__always) static func pi(_ nu: Float) -> Double {
        let x = Double(nu)
        return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x))
    }

    /// The expected cost of one target: Π_p S_p.
    static func expected(_ t: RegularizerTarget) throws -> (e: Double, sums: [Double])? {
        guard let costs = t.costs, costs.count == t.values.count, !t.values.isEmpty else {
            throw PluginError.invalidArgument("\(id): target \(t.name) needs one cost view per part (got \(t.costs?.count ?? 0) for \(t.values.count) parts)")
        }
        var sums: [Double] = []
        for (v, c) in zip(t.values, costs) {
            try v.requireSameShape(as: c, "\(t.name) costs")
            guard let nu = v.data, let k = c.data else { return nil }   // dry run
            var s = 0.0
            for i in 0..<v.count { s += Double(k[i]) * pi(nu[i]) }
            sums.append(s)
        }
        return (sums.reduce(1, *), sums)
    }

    func loss(state: RunState, targets: [RegularizerTarget]) throws -> Double {
        // The host also calls gate-weight regularizers with the α gate's targets ("gate/…"): no
        // channel-mask target at all means nothing of ours to regularize in that call.
        guard targets.contains(where: { $0.name.hasPrefix("channels/") }) else { return 0 }
        let mine = targets.filter { $0.kind == .gateWeights && $0.name.hasSuffix("/" + cost) }
        guard !mine.isEmpty else {
            throw PluginError.invalidArgument("\(Self.id): no channel-mask target ends in '/\(cost)' (got \(targets.map(\.name)))")
        }
        var total = 0.0
        for t in mine {
            guard let (e, sums) = try Self.expected(t) else { return 0 }
            total += e
            for p in t.values.indices {
                guard let g = t.grads[p].data, let nu = t.values[p].data, let k = t.costs![p].data else { continue }
                var others = 1.0
                for q in sums.indices where q != p { others *= sums[q] }
                for i in 0..<t.values[p].count {
                    let pi = Self.pi(nu[i])
                    g[i] += Float(lambda * Double(k[i]) * pi * (1 - pi) * others)
                }
            }
        }
        return lambda * total
    }

    func setValue(_ name: String, _ value: Double) throws {
        guard name == "lambda" else { throw PluginError.unsupported("\(Self.id) has one settable value, 'lambda' (got '\(name)')") }
        guard value.isFinite, value >= 0 else { throw PluginError.invalidArgument("\(Self.id): lambda must be finite and >= 0 (got \(value))") }
        lambda = value
    }
}
