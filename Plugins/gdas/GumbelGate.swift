// espalier.gate.gdas/1: GDAS's hard Gumbel-softmax gate (Dong & Yang, 2019). Per row (an edge's
// candidate ops) it draws Gumbel noise g, picks k = argmax((log_softmax(α) + g)/τ) and writes the
// one-hot h = onehot(k) with `active` = 1 only for k, so the host runs (and allocates for) only the
// sampled op. Backward is the straight-through estimator of `hard = h − p.detach() + p`:
// ∂L/∂α = Jacobian of p = softmax((log_softmax(α) + g)/τ) applied to ∂L/∂h, with the g of forward.
// Evaluation is deterministic (argmax α). Not here: the soft Gumbel-softmax (all ops running).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class GumbelGate: GateComponent {
    static let id = "espalier.gate.gdas/1"

    private let host: PluginHost
    private let rows: Int
    private let cols: Int
    /// The built-in linear schedule τ_max → τ_min over the run's steps.
    private let tauMax: Double, tauMin: Double
    /// τ set through `set_value("tau")` (a user-selected schedule or a strategy); wins over the built-in one.
    private var tauSet: Double?

    /// What the last training forward drew, for backward: g (rows, cols) (0 where the logit is
    /// −∞) and the τ it used. nil after an evaluation forward.
    private var gumbel: [Float] = []
    private var sampledTau: Double?

    init(host: PluginHost, config: GateConfig, params: ParamValues) throws {
        self.host = host
        rows = config.rows
        cols = config.cols
        tauMax = try params.double("tau_max")
        tauMin = try params.double("tau_min")
        guard tauMin.isFinite, tauMax.isFinite, tauMin > 0, tauMax >= tauMin else {
            throw PluginError.invalidArgument("\(Self.id): need 0 < tau_min <= tau_max (got tau_min=\(tauMin), tau_max=\(tauMax))")
        }
    }

    /// τ at this step: the set value, else τ_max − (τ_max − τ_min)·step/total (clamped to [0, 1]).
    func tau(_ state: RunState) -> Double {
        if let tauSet { return tauSet }
        return linearTau(step: state.step, total: state.totalSteps, from: tauMax, to: tauMin)
    }

    func forward(state: RunState, logits: TensorView, weights: TensorView, active: UnsafeMutableBufferPointer<UInt8>?) throws {
        guard let l = logits.data, let w = weights.data else {
            // Dry run: nothing is drawn; every candidate may run (an upper bound).
            if let active { active.update(repeating: 1) }
            return
        }
        let training = state.training
        let invTau = Float(1 / tau(state))
        if training {
            gumbel = Array(repeating: 0, count: rows * cols)
            sampledTau = tau(state)
        } else {
            sampledTau = nil
        }
        for r in 0..<rows {
            let lr = l + r * cols, wr = w + r * cols
            var k = -1
            if training {
                // log_softmax over the finite logits (−∞ = masked: never sampled).
                let lse = logSumExp(lr, cols)
                var best = -Float.infinity
                for j in 0..<cols where lr[j] > -.infinity {
                    let g = try gumbelNoise()
                    gumbel[r * cols + j] = g
                    let z = (lr[j] - lse + g) * invTau
                    if k < 0 || z > best { best = z; k = j }
                }
            } else {
                for j in 0..<cols where lr[j] > -.infinity && (k < 0 || lr[j] > lr[k]) { k = j }
            }
            for j in 0..<cols { wr[j] = j == k ? 1 : 0 }
            if let active { for j in 0..<cols { active[r * cols + j] = j == k ? 1 : 0 } }
        }
    }

    func backward(state: RunState, logits: TensorView, weights: TensorView, dWeights: TensorView, dLogits: TensorView) throws {
        guard let l = logits.data, let dh = dWeights.data, let dl = dLogits.data else { return }
        guard let t = sampledTau, gumbel.count == rows * cols else {
            throw PluginError.invalidArgument("\(Self.id): backward needs the noise of a training forward, but the last forward was in evaluation mode")
        }
        // With p = softmax(z), z = (log_softmax(α) + g)/τ: ∂L/∂z_i = p_i(dh_i − Σ_j p_j dh_j); since
        // Σ_i ∂L/∂z_i = 0, the log_softmax Jacobian leaves ∂L/∂α_i = ∂L/∂z_i / τ.
        let invTau = Float(1 / t)
        var p = [Float](repeating: 0, count: cols)
        for r in 0..<rows {
            let o = r * cols
            softmaxOfPerturbed(l + o, gumbel, o, invTau, into: &p)
            var dot: Float = 0
            for j in 0..<cols where p[j] > 0 { dot += p[j] * dh[o + j] }
            for j in 0..<cols where p[j] > 0 { dl[o + j] += p[j] * (dh[o + j] - dot) * invTau }
        }
    }

    /// p = softmax((log_softmax(α) + g)/τ) of one row (0 where α = −∞).
    private func softmaxOfPerturbed(_ lr: UnsafeMutablePointer<Float>, _ g: [Float], _ o: Int, _ invTau: Float, into p: inout [Float]) {
        let lse = logSumExp(lr, cols)
        var m = -Float.infinity
        for j in 0..<cols where lr[j] > -.infinity { m = max(m, (lr[j] - lse + g[o + j]) * invTau) }
        var sum: Float = 0
        for j in 0..<cols {
            p[j] = lr[j] > -.infinity ? expf((lr[j] - lse + g[o + j]) * invTau - m) : 0
            sum += p[j]
        }
        if sum > 0 { for j in 0..<cols { p[j] /= sum } }
    }

    /// g = −log(−log u), u uniform in (0, 1) from the run's RNG (u = 0 is redrawn, as GDAS does).
    private func gumbelNoise() throws -> Float {
        var u = 0.0
        while u <= 0 { u = try host.randomUniform() }
        return Float(-log(-log(u)))
    }

    func setValue(_ name: String, _ value: Double) throws {
        guard name == "tau" else { throw PluginError.unsupported("\(Self.id) has one settable value, 'tau' (got '\(name)')") }
        guard value.isFinite, value > 0 else {
            throw PluginError.invalidArgument("\(Self.id): tau must be a finite number > 0 (got \(value))")
        }
        tauSet = value
    }
}

/// log Σ_j e^{x_j} over the finite entries of a row (−∞ if there are none).
func logSumExp(_ x: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
    var m = -Float.infinity
    for j in 0..<n { m = max(m, x[j]) }
    guard m > -.infinity else { return -.infinity }
    var s: Float = 0
    for j in 0..<n where x[j] > -.infinity { s += expf(x[j] - m) }
    return m + logf(s)
}

/// Linear from `from` at step 0 to `to` at `total` (clamped; total ≤ 0 gives `from`).
func linearTau(step: Int, total: Int, from: Double, to: Double) -> Double {
    guard total > 0 else { return from }
    let fraction = min(max(Double(step) / Double(total), 0), 1)
    return from - (from - to) * fraction
}

/// The dynamic method `tau.schedule=gdas-linear`: GDAS's τ from 10 to 0.1 over the run.
func gdasLinearTau(_ step: Int64, _ total: Int64) -> Double {
    linearTau(step: Int(step), total: Int(total), from: 10, to: 0.1)
}
