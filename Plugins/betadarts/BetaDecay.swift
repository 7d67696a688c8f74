// espalier.regularizer.beta-decay/1: β-DARTS's beta-decay regularization (Ye et al., 2022).
// For each architecture-logit tensor α (edges, ops) — normal and reduce cells separately — the
// term is λ_t · mean_e logsumexp(α_e), and its gradient λ_t · softmax(α_e) / E is ADDED into the
// target's grad. The authors' code (Sunshine-Ye/Beta-DARTS, architect.py `_backward_step`,
// `mlc_loss`) adds `(0 + 50·epoch/100) · mean(logsumexp(α, dim=-1))` to the validation loss;
// here λ_t = lambda · epoch / ramp_epochs with defaults 50 and 100, unless a value was set with
// set_value("lambda") (e.g. by the host's `lambda.schedule`), which is then kept.
// Candidates that do not take part — −∞ logits, or (during a search) masked and removed ops —
// are left out of the logsumexp; an edge with none left does not count in E.
// Not here: the α step itself (the strategy and the host's trainer do it).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class BetaDecayRegularizer: LossRegularizer {
    static let id = "espalier.regularizer.beta-decay/1"

    private let host: PluginHost
    private let lambda: Double
    private let rampEpochs: Int
    /// Set through set_value("lambda"); wins over the ramp from then on.
    private var lambdaOverride: Double? = nil

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        lambda = try params.double("lambda")
        guard lambda.isFinite, lambda >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): lambda must be a finite number >= 0 (got \(lambda))")
        }
        rampEpochs = try params.int("ramp_epochs")
        guard rampEpochs >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): ramp_epochs must be >= 0 (0 = the run's epochs; got \(rampEpochs))")
        }
    }

    /// λ_t at `state`: the set value if there is one, else lambda · epoch / ramp_epochs.
    func currentLambda(_ state: RunState) -> Double {
        if let lambdaOverride { return lambdaOverride }
        let ramp = rampEpochs > 0 ? rampEpochs : state.totalEpochs
        guard ramp > 0 else { return 0 }
        return lambda * Double(state.epoch) / Double(ramp)
    }

    func setValue(_ name: String, _ value: Double) throws {
        guard name == "lambda" else {
            throw PluginError.unsupported("\(Self.id) has one settable value, 'lambda' (got '\(name)')")
        }
        guard value.isFinite, value >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): lambda must be a finite number >= 0 (got \(value))")
        }
        lambdaOverride = value
    }

    func loss(state: RunState, targets: [RegularizerTarget]) throws -> Double {
        let lambdaT = currentLambda(state)
        var total = 0.0
        for t in targets where t.kind == .arch {
            for (part, alpha) in t.values.enumerated() {
                guard alpha.rank == 2 else {
                    throw PluginError.shape("\(Self.id): target '\(t.name)' part \(part) has shape \(alpha.shape); architecture logits are (edges, ops)")
                }
                let grad = t.grads[part]
                if grad.raw.data != nil { try alpha.requireSameShape(as: grad, "\(Self.id): gradient of '\(t.name)'") }
                let edges = alpha.dim(0), ops = alpha.dim(1)
                let states = candidateStates(target: t.name, edges: edges, ops: ops)
                guard let a = alpha.raw.data else { continue }   // dry run: nothing to compute
                let g = grad.raw.data
                // Pass 1: logsumexp per edge over the candidates that take part.
                var lse = [Double](repeating: -.infinity, count: edges)
                for e in 0..<edges {
                    var m = -Double.infinity
                    for o in 0..<ops where takesPart(a[e * ops + o], states, e * ops + o) { m = max(m, Double(a[e * ops + o])) }
                    guard m > -.infinity else { continue }
                    var s = 0.0
                    for o in 0..<ops where takesPart(a[e * ops + o], states, e * ops + o) { s += exp(Double(a[e * ops + o]) - m) }
                    lse[e] = m + log(s)
                }
                let counted = lse.filter { $0 > -.infinity }
                guard !counted.isEmpty else { continue }
                let count = Double(counted.count)
                total += lambdaT * counted.reduce(0, +) / count
                // Pass 2: d(λ·mean_e LSE)/dα_{e,o} = λ · softmax(α_e)_o / E, added into the grad.
                guard let g, lambdaT != 0 else { continue }
                for e in 0..<edges where lse[e] > -.infinity {
                    for o in 0..<ops where takesPart(a[e * ops + o], states, e * ops + o) {
                        g[e * ops + o] += Float(lambdaT * exp(Double(a[e * ops + o]) - lse[e]) / count)
                    }
                }
            }
        }
        return total
    }

    @inline(__always)
    private func takesPart(_ logit: Float, _ states: [Bool]?, _ index: Int) -> Bool {
        logit.isFinite && (states?[index] ?? true)
    }

    /// During a search: whether each candidate of the target's cell type is active, (edges·ops);
    /// nil outside a search, for other targets, or when the space does not match the shape.
    private func candidateStates(target: String, edges: Int, ops: Int) -> [Bool]? {
        let cellType: Int
        switch target {
        case "arch/normal": cellType = 0
        case "arch/reduce": cellType = 1
        default: return nil
        }
        guard let search = host.search, let info = try? search.spaceInfo(),
              info.edges == edges, info.ops == ops, cellType < info.cellTypes else { return nil }
        var out = [Bool](repeating: true, count: edges * ops)
        for e in 0..<edges {
            for o in 0..<ops {
                guard let s = try? search.opState(cellType: cellType, edge: e, op: o) else { return nil }
                out[e * ops + o] = s == .active
            }
        }
        return out
    }
}

/// The `lambda.schedule` method `beta-linear`: λ = 25 · step / total, clamped to [0, 25]
/// (the authors' 50·epoch/100 over their 50-epoch DARTS search, continuous in the step);
/// `total` ≤ 0 gives 0.
func betaLinearLambda(_ step: Int64, _ total: Int64) -> Double {
    guard total > 0 else { return 0 }
    return 25 * min(max(Double(step) / Double(total), 0), 1)
}
