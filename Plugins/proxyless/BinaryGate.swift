// espalier.gate.binary/1: ProxylessNAS's binary gate in "two" mode (Cai et al., 2019). Per row (an
// edge's candidate ops) it samples two distinct candidates from p = softmax(α) (without
// replacement; −∞ = masked, never sampled), picks one of them with the probabilities p̂
// renormalised over the pair, and writes g = onehot(chosen). Both sampled candidates are active,
// so the host computes both and ∂L/∂g_j reaches both; backward:
//   ∂L/∂α_i = Σ_{j∈pair} ∂L/∂g_j · p̂_j(δ_ij − p̂_i)   for i in the pair, 0 elsewhere.
// Evaluation: argmax α. The pair behind each α gradient is left in `SampledPairs` for the
// ProxylessNAS strategy's rescaling (see there). Not here: the "full" and "full_v2" modes.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

/// The pairs the binary gate sampled for the forward whose α gradient was taken, shared by the
/// gate and the strategy of this library (they are in the same shared object). Keyed by the run's
/// host context (`services->host`, one per run, so a dry-run prediction's gate never touches the
/// real run's record) and the gate's owner ("arch/normal/gate", "arch/reduce/gate").
///
/// Protocol: the strategy clears its run's records in `plan_step`; the gate's first `backward`
/// after that writes the pair of every row (the α step's forward: weight steps and evaluations
/// record no α gradient, so never call backward); the strategy reads them in `after_step`.
/// Host thread only, like every plugin call.
enum SampledPairs {
    struct Key: Hashable { let host: UInt; let owner: String }
    /// Per row: the two sampled columns (the second is −1 when only one candidate is left).
    nonisolated(unsafe) static var records: [Key: [(Int, Int)]] = [:]

    static func key(_ host: PluginHost, _ owner: String) -> Key {
        Key(host: UInt(bitPattern: host.services.pointee.host), owner: owner)
    }

    static func clear(_ host: PluginHost) {
        let h = UInt(bitPattern: host.services.pointee.host)
        records = records.filter { $0.key.host != h }
    }

    /// This run's records, by owner.
    static func of(_ host: PluginHost) -> [String: [(Int, Int)]] {
        let h = UInt(bitPattern: host.services.pointee.host)
        var out: [String: [(Int, Int)]] = [:]
        for (k, v) in records where k.host == h { out[k.owner] = v }
        return out
    }
}

final class BinaryGate: GateComponent {
    static let id = "espalier.gate.binary/1"

    private let host: PluginHost
    private let rows: Int, cols: Int
    private let owner: String
    /// The pair of each row from the last training forward (empty after an evaluation forward).
    private var pairs: [(Int, Int)] = []

    init(host: PluginHost, config: GateConfig, params: ParamValues) throws {
        self.host = host
        rows = config.rows
        cols = config.cols
        owner = config.owner
    }

    func forward(state: RunState, logits: TensorView, weights: TensorView, active: UnsafeMutableBufferPointer<UInt8>?) throws {
        guard let l = logits.data, let w = weights.data else {
            if let active { active.update(repeating: 1) }   // dry run: an upper bound
            return
        }
        pairs = []
        var p = [Double](repeating: 0, count: cols)
        for r in 0..<rows {
            let lr = l + r * cols
            var chosen = -1
            var pair = (-1, -1)
            if state.training {
                softmax(lr, into: &p)
                let first = try sample(p, excluding: -1)
                let second = first < 0 ? -1 : try sample(p, excluding: first)
                pair = (first, second)
                if second < 0 {
                    chosen = first
                } else {
                    let pHat = p[first] / (p[first] + p[second])
                    chosen = try host.randomUniform() < pHat ? first : second
                }
                pairs.append(pair)
            } else {
                for j in 0..<cols where lr[j] > -.infinity && (chosen < 0 || lr[j] > lr[chosen]) { chosen = j }
                pair = (chosen, -1)
            }
            for j in 0..<cols { w[r * cols + j] = j == chosen ? 1 : 0 }
            if let active { for j in 0..<cols { active[r * cols + j] = (j == pair.0 || j == pair.1) ? 1 : 0 } }
        }
    }

    func backward(state: RunState, logits: TensorView, weights: TensorView, dWeights: TensorView, dLogits: TensorView) throws {
        guard let l = logits.data, let dg = dWeights.data, let dl = dLogits.data else { return }
        guard pairs.count == rows else {
            throw PluginError.invalidArgument("\(Self.id): backward needs the pairs of a training forward, but the last forward was in evaluation mode")
        }
        let key = SampledPairs.key(host, owner)
        if SampledPairs.records[key] == nil { SampledPairs.records[key] = pairs }
        for r in 0..<rows {
            let (a, b) = pairs[r]
            guard a >= 0, b >= 0 else { continue }   // one candidate left: p̂ = 1, no gradient
            let o = r * cols
            // p̂ over the pair: softmax of (α_a, α_b).
            let pa = 1 / (1 + expf(l[o + b] - l[o + a])), pb = 1 - pa
            let (ga, gb) = (dg[o + a], dg[o + b])
            dl[o + a] += ga * pa * (1 - pa) + gb * pb * (0 - pa)
            dl[o + b] += ga * pa * (0 - pb) + gb * pb * (1 - pb)
        }
    }

    /// softmax of a row (0 where the logit is −∞).
    private func softmax(_ lr: UnsafeMutablePointer<Float>, into p: inout [Double]) {
        var m = -Double.infinity
        for j in 0..<cols { m = max(m, Double(lr[j])) }
        var s = 0.0
        for j in 0..<cols {
            p[j] = lr[j] > -.infinity ? exp(Double(lr[j]) - m) : 0
            s += p[j]
        }
        if s > 0 { for j in 0..<cols { p[j] /= s } }
    }

    /// A column drawn from p without `excluding` (renormalised), or −1 if no mass is left.
    private func sample(_ p: [Double], excluding: Int) throws -> Int {
        var total = 0.0
        for j in 0..<cols where j != excluding { total += p[j] }
        guard total > 0 else { return -1 }
        let u = try host.randomUniform() * total
        var c = 0.0, last = -1
        for j in 0..<cols where j != excluding && p[j] > 0 {
            c += p[j]
            last = j
            if u < c { return j }
        }
        return last   // rounding at the top end
    }
}
