// espalier.gate.figs/1: FiGS's per-channel Logistic-Sigmoid masks ("Fine-Grained Stochastic
// Architecture Search", §3.1). Logits ν (one per channel, a vector of any length; the
// host makes one instance per length) become masks
//   training:  m = σ((ν + L)/τ),  L ~ Logistic(0, 1) = log u − log(1 − u), u uniform from the run's RNG
//              straight_through: m = 1[ν + L > 0] forward, the sigmoid's gradient backward
//   inference: m = 1[ν > 0]
// Backward is exact for the relaxation: ∂m/∂ν = s(1 − s)/τ with s = σ((ν + L)/τ) and the L of the
// forward. One instance may serve several ops of the same width in one step: the noise is kept per
// logits tensor (its data address, stable for a parameter), so each backward finds its own draw.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class FigsGate: GateComponent {
    static let id = "espalier.gate.figs/1"

    private let host: PluginHost
    private let count: Int
    private var tau: Double
    private let straightThrough: Bool
    /// The noise L of the last training forward of each logits tensor (keyed by its data address).
    private var noise: [UInt: [Float]] = [:]

    init(host: PluginHost, config: GateConfig, params: ParamValues) throws {
        guard config.cols == 1 || config.rows == 1 else {
            throw PluginError.invalidArgument("\(Self.id): per-channel masks take a vector of logits ((C, 1) or (1, C)); got (\(config.rows), \(config.cols)) at '\(config.owner)'")
        }
        self.host = host
        count = config.rows * config.cols
        tau = try params.double("tau")
        try Self.checkTau(tau)
        straightThrough = try params.bool("straight_through")
    }

    static func checkTau(_ tau: Double) throws {
        guard tau.isFinite, tau > 0 else {
            throw PluginError.invalidArgument("\(id): tau must be a finite number > 0 (got \(tau)); FiGS uses 0.001")
        }
    }

    /// σ(x), written so that large |x| (x = z/τ with τ = 0.001) neither overflows nor loses 0 and 1.
    @inline(__always) static func sigmoid(_ x: Float) -> Float {
        x >= 0 ? 1 / (1 + expf(-x)) : expf(x) / (1 + expf(x))
    }

    func forward(state: RunState, logits: TensorView, weights: TensorView, active: UnsafeMutableBufferPointer<UInt8>?) throws {
        // A masked channel is still computed (the mask multiplies it): every candidate is active.
        if let active { active.update(repeating: 1) }
        guard let l = logits.data, let m = weights.data else { return }   // dry run
        let key = UInt(bitPattern: l)
        guard state.training else {
            noise[key] = nil
            for i in 0..<count { m[i] = l[i] > 0 ? 1 : 0 }
            return
        }
        var draw = [Float](repeating: 0, count: count)
        let invTau = Float(1 / tau)
        for i in 0..<count {
            var u = 0.0
            while u <= 0 || u >= 1 { u = try host.randomUniform() }
            let n = Float(log(u) - log1p(-u))
            draw[i] = n
            let z = l[i] + n
            m[i] = straightThrough ? (z > 0 ? 1 : 0) : Self.sigmoid(z * invTau)
        }
        noise[key] = draw
    }

    func backward(state: RunState, logits: TensorView, weights: TensorView, dWeights: TensorView, dLogits: TensorView) throws {
        guard let l = logits.data, let dm = dWeights.data, let dl = dLogits.data else { return }
        guard let draw = noise[UInt(bitPattern: l)], draw.count == count else {
            throw PluginError.invalidArgument("\(Self.id): backward needs the noise of a training forward of these logits; the last forward was in evaluation mode (masks 1[ν > 0] have no gradient)")
        }
        let invTau = Float(1 / tau)
        for i in 0..<count {
            let s = Self.sigmoid((l[i] + draw[i]) * invTau)
            dl[i] += dm[i] * s * (1 - s) * invTau
        }
    }

    func setValue(_ name: String, _ value: Double) throws {
        guard name == "tau" else { throw PluginError.unsupported("\(Self.id) has one settable value, 'tau' (got '\(name)')") }
        try Self.checkTau(value)
        tau = value
    }
}
