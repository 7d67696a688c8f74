// espalier.gate.softmax/1: the DARTS continuous relaxation — each row of logits (an edge's
// candidate ops) becomes softmax(logits/τ). Deterministic and soft: every candidate runs, and
// evaluation is the same as training. Also the GDAS temperature schedule as a dynamic method.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

/// weights[r, :] = softmax(logits[r, :] / τ).
final class SoftmaxGate: GateComponent {
    static let id = "espalier.gate.softmax/1"

    private let rows: Int
    private let cols: Int
    private var tau: Double

    init(host: PluginHost, config: GateConfig, params: ParamValues) throws {
        rows = config.rows
        cols = config.cols
        tau = try params.double("tau")
        try Self.checkTau(tau)
    }

    static func checkTau(_ tau: Double) throws {
        guard tau.isFinite, tau > 0 else {
            throw PluginError.invalidArgument("\(id): tau must be a finite number > 0 (got \(tau))")
        }
    }

    func forward(state: RunState, logits: TensorView, weights: TensorView, active: UnsafeMutableBufferPointer<UInt8>?) throws {
        // A soft gate: every candidate runs.
        if let active { active.update(repeating: 1) }
        guard let l = logits.data, let w = weights.data else { return }  // dry run
        let invTau = Float(1 / tau)
        for r in 0..<rows {
            let lr = l + r * cols, wr = w + r * cols
            var m = -Float.infinity
            for j in 0..<cols { m = max(m, lr[j] * invTau) }
            // Every candidate of the edge masked (−∞): the edge contributes nothing.
            if m == -.infinity { for j in 0..<cols { wr[j] = 0 }; continue }
            var sum: Float = 0
            for j in 0..<cols {
                let e = expf(lr[j] * invTau - m)
                wr[j] = e
                sum += e
            }
            let inv = 1 / sum
            for j in 0..<cols { wr[j] *= inv }
        }
    }

    func backward(state: RunState, logits: TensorView, weights: TensorView, dWeights: TensorView, dLogits: TensorView) throws {
        // d_logits += w ⊙ (dw − Σ_j w_j dw_j) / τ
        guard let w = weights.data, let dw = dWeights.data, let dl = dLogits.data else { return }
        let invTau = Float(1 / tau)
        for r in 0..<rows {
            let o = r * cols
            var dot: Float = 0
            for j in 0..<cols { dot += w[o + j] * dw[o + j] }
            for j in 0..<cols { dl[o + j] += w[o + j] * (dw[o + j] - dot) * invTau }
        }
    }

    func setValue(_ name: String, _ value: Double) throws {
        guard name == "tau" else { throw PluginError.unsupported("\(Self.id) has one settable value, 'tau' (got '\(name)')") }
        try Self.checkTau(value)
        tau = value
    }
}

/// GDAS's temperature schedule: τ decays linearly from 10 to 0.1 as `step` goes from 0 to
/// `total` (clamped; `total` ≤ 0 gives 10).
func linearDecayTau(_ step: Int64, _ total: Int64) -> Double {
    let start = 10.0, end = 0.1
    guard total > 0 else { return start }
    let fraction = min(max(Double(step) / Double(total), 0), 1)
    return start - (start - end) * fraction
}
