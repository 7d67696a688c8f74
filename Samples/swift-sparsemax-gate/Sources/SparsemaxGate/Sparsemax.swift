// A sample Swift plugin: the sparsemax gate org.example.gate.sparsemax/1 (Martins & Astudillo,
// 2016), written against EspalierPluginKit only — no C glue. Sparsemax projects each row of
// logits/τ onto the probability simplex, so weights are exactly 0 off a support set: it is a HARD
// gate, and the host skips every candidate whose weight is 0.

import EspalierPluginKit

/// weights[r, :] = sparsemax(logits[r, :] / τ) = max(z − θ, 0) with θ chosen so the row sums to 1.
final class SparsemaxGate: GateComponent {
    static let id = "org.example.gate.sparsemax/1"

    private let rows: Int
    private let cols: Int
    private var tau: Double
    /// One row of z sorted in decreasing order (reused between calls).
    private var sorted: [Double]

    init(host: PluginHost, config: GateConfig, params: ParamValues) throws {
        rows = config.rows
        cols = config.cols
        tau = try params.double("tau")
        sorted = [Double](repeating: 0, count: config.cols)
        try Self.checkTau(tau)
    }

    static func checkTau(_ tau: Double) throws {
        guard tau.isFinite, tau > 0 else {
            throw PluginError.invalidArgument("\(id): tau must be a finite number > 0 (got \(tau))")
        }
    }

    func forward(state: RunState, logits: TensorView, weights: TensorView, active: UnsafeMutableBufferPointer<UInt8>?) throws {
        guard let l = logits.data, let w = weights.data else {
            // Dry run: the weights are unknown, so predict memory for the worst case, all running.
            if let active { active.update(repeating: 1) }
            return
        }
        guard cols > 0 else { return }
        let invTau = 1 / tau
        for r in 0..<rows {
            let lr = l + r * cols, wr = w + r * cols
            // θ = (Σ_{j≤k} z_(j) − 1)/k for the largest k with 1 + k·z_(k) > Σ_{j≤k} z_(j).
            for j in 0..<cols { sorted[j] = Double(lr[j]) * invTau }
            sorted.sort(by: >)
            var cumulative = 0.0, support = 0, supportSum = 0.0
            for k in 1...cols {
                cumulative += sorted[k - 1]
                if 1 + Double(k) * sorted[k - 1] > cumulative {
                    support = k
                    supportSum = cumulative
                }
            }
            let theta = (supportSum - 1) / Double(max(support, 1))
            for j in 0..<cols {
                let v = max(Double(lr[j]) * invTau - theta, 0)
                wr[j] = Float(v)
                // Exactly zero weight: the candidate need not run at all.
                if let active { active[r * cols + j] = wr[j] > 0 ? 1 : 0 }
            }
        }
    }

    func backward(state: RunState, logits: TensorView, weights: TensorView, dWeights: TensorView, dLogits: TensorView) throws {
        // On the support S: d_logits_i += (dw_i − mean_{j∈S} dw_j)/τ; 0 off the support.
        guard let w = weights.data, let dw = dWeights.data, let dl = dLogits.data else { return }
        let invTau = 1 / tau
        for r in 0..<rows {
            let o = r * cols
            var sum = 0.0, n = 0
            for j in 0..<cols where w[o + j] > 0 {
                sum += Double(dw[o + j])
                n += 1
            }
            guard n > 0 else { continue }
            let mean = sum / Double(n)
            for j in 0..<cols where w[o + j] > 0 {
                dl[o + j] += Float((Double(dw[o + j]) - mean) * invTau)
            }
        }
    }

    func setValue(_ name: String, _ value: Double) throws {
        guard name == "tau" else { throw PluginError.unsupported("\(Self.id) has one settable value, 'tau' (got '\(name)')") }
        try Self.checkTau(value)
        tau = value
    }
}

/// The library's description, built once on first use and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "org.example.sparsemax",
    version: "1.0.0",
    summary: "Sample Swift plugin: the sparsemax gate",
    components: [
        .gate(SparsemaxGate.self,
              id: SparsemaxGate.id,
              summary: "Sparsemax over each edge's candidate ops (exact zeros; ops with weight 0 are skipped)",
              params: [
                  .double("tau", default: 1.0, doc: "temperature: weights = sparsemax(logits / tau)", min: 1e-3, max: 1e3),
              ],
              flags: .hard,
              granularities: .ops),
    ])

/// The one exported symbol: the description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
