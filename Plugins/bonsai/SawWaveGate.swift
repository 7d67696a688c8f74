// espalier.gate.sawwave/1: Bonsai-Net's saw-wave pruner (Geada et al.). Each pruner weight w
// (one per candidate op on an edge, or one per inter-cell connection) gives the multiplier
//     G(w) + S(w),   G(w) = 1[w ≥ 0],   S(w) = (M·w − ⌊M·w⌋) / M,   M = 1e5,
// whose value is the step G (S < 1/M) and whose slope is S's, 1 almost everywhere: the forward
// is binary and the gradient passes straight through, ∂L/∂w = ∂L/∂weight.
// Forward: weights = G(w) exactly (0 or 1), and active = G(w), so a pruned candidate never runs
// (no forward, no backward, no memory) and a kept one is multiplied by exactly 1. With
// saw_value=true the kept weight is 1 + S(w) (the paper's literal value; pruned ones still do
// not run). Non-finite logits (masked or removed candidates, −∞) give weight 0 and no gradient.
// Backward: dLogits += dWeights, except where w sits at or beyond ±clamp and the gradient step
// would push it further out (the clamp as a projected gradient; 0 = no clamp).
// Initialisation (paper: w = 0.1, later code 0.01) and the hard clamp of w itself to ±5·init are
// the strategy's: a gate cannot write α. espalier.strategy.bonsai/1 writes α = init through
// arch_view before the first step and clamps α to ±clamp after every step.

import EspalierPluginKit

/// weights = G(w) (or G(w)·(1 + S(w)) with saw_value), elementwise over (rows, cols).
final class SawWaveGate: GateComponent {
    static let id = "espalier.gate.sawwave/1"

    private let m: Double
    private let clamp: Double
    private let sawValue: Bool

    init(host: PluginHost, config: GateConfig, params: ParamValues) throws {
        m = try params.double("m")
        guard m.isFinite, m >= 1 else { throw PluginError.invalidArgument("\(Self.id): m (M) must be a finite number >= 1 (got \(m))") }
        clamp = try params.double("clamp")
        guard clamp.isFinite, clamp >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): clamp must be a finite number >= 0 (0 = no clamp; got \(clamp))")
        }
        sawValue = try params.bool("saw_value")
        guard config.granularity == .ops || config.granularity == .inputs else {
            throw PluginError.invalidArgument("\(Self.id) prunes candidate ops (ES_GATE_OPS) and connections (ES_GATE_INPUTS), not \(config.granularity)")
        }
    }

    /// S(w) = (M·w − ⌊M·w⌋) / M ∈ [0, 1/M).
    static func saw(_ w: Double, m: Double) -> Double {
        let x = m * w
        return (x - x.rounded(.down)) / m
    }

    func forward(state: RunState, logits: TensorView, weights: TensorView, active: UnsafeMutableBufferPointer<UInt8>?) throws {
        // Which candidates run does not depend on the data, so it is known in a dry run too; but
        // a dry run has no logits, so it counts every candidate as running (the largest network).
        guard let l = logits.data, let w = weights.data else {
            if let active { active.update(repeating: 1) }
            return
        }
        for i in 0..<logits.count {
            let x = l[i]
            let keep = x.isFinite && x >= 0
            active?[i] = keep ? 1 : 0
            w[i] = keep ? (sawValue ? Float(1 + Self.saw(Double(x), m: m)) : 1) : 0
        }
    }

    func backward(state: RunState, logits: TensorView, weights: TensorView, dWeights: TensorView, dLogits: TensorView) throws {
        // Straight through: ∂(G + S)/∂w = 1 almost everywhere.
        guard let l = logits.data, let dw = dWeights.data, let dl = dLogits.data else { return }
        let c = Float(clamp)
        for i in 0..<logits.count {
            let x = l[i], g = dw[i]
            guard x.isFinite else { continue }
            // Gradient descent moves w by −g: at +clamp a negative g pushes it out, at −clamp a positive one.
            if c > 0 && ((x >= c && g < 0) || (x <= -c && g > 0)) { continue }
            dl[i] += g
        }
    }
}
