// espalier.strategy.proxyless/1: ProxylessNAS's search loop (Cai et al., 2019) on the DARTS cell
// space: first-order bilevel steps with the binary gate, and after each architecture update the
// rescaling that keeps the unsampled candidates' probabilities: for the sampled pair of each edge
//   α_new[pair] += log Σ_pair e^{α_old} − log Σ_pair e^{α_new}.
// How it knows the pair and α_old: `plan_step` snapshots α of both cell types (arch_view) and
// clears the run's `SampledPairs` records; the binary gate's backward in the α step records the
// pairs it sampled; `after_step` reads them and rewrites α through arch_view. With
// `keep_unsampled` the optimiser's change to unsampled α (Adam momentum and weight decay move
// them although their gradient is 0) is undone as well, so their probabilities stay exactly.
// The host derives: the DARTS rule on softmax(α), as for every sampled gate. Not here: ProxylessNAS's own (MobileNet) space.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class ProxylessStrategy: StrategyComponent {
    static let id = "espalier.strategy.proxyless/1"

    private let host: PluginHost
    let warmupEpochs: Int
    let keepUnsampled: Bool
    /// α of (normal, reduce) before the step's architecture update; nil when no update is planned.
    private var snapshot: [[Float]]?

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        warmupEpochs = try params.int("warmup_epochs")
        keepUnsampled = try params.bool("keep_unsampled")
        guard warmupEpochs >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): warmup_epochs must be >= 0 (got \(warmupEpochs))")
        }
    }

    func planStep(state: RunState) throws -> StepPlan {
        if state.epoch < warmupEpochs {
            snapshot = nil
            return StepPlan(.weightsOnly)
        }
        SampledPairs.clear(host)
        snapshot = nil
        if !state.isDryRun, let search = host.search {
            let types = try search.spaceInfo().cellTypes
            snapshot = try (0..<types).map { t in
                let v = try search.archView(cellType: t).logits
                return v.buffer.map(Array.init) ?? []
            }
        }
        return StepPlan(.bilevel)
    }

    func afterStep(state: RunState) throws {
        guard let old = snapshot, !state.isDryRun, let search = host.search else { return }
        snapshot = nil
        let info = try search.spaceInfo()
        let records = SampledPairs.of(host)
        guard !records.isEmpty else {
            throw PluginError.invalidArgument("\(Self.id): the architecture step recorded no sampled pairs; this strategy needs the binary gate espalier.gate.binary/1 (--gate espalier.gate.binary/1)")
        }
        for t in 0..<min(info.cellTypes, old.count) {
            let name = t == 0 ? "normal" : "reduce"
            guard let pairs = records.first(where: { $0.key.split(separator: "/").contains(Substring(name)) })?.value else { continue }
            let view = try search.archView(cellType: t).logits
            guard let a = view.buffer, a.count == old[t].count, pairs.count == info.edges else {
                throw PluginError.shape("\(Self.id): α of the \(name) cell has \(view.count) entries and \(pairs.count) sampled rows; expected \(old[t].count) and \(info.edges)")
            }
            Self.rescale(new: a, old: old[t], pairs: pairs, ops: info.ops, keepUnsampled: keepUnsampled)
        }
    }

    /// Per row e with sampled pair P: α[P] += logsumexp(α_old[P]) − logsumexp(α[P]); with
    /// `keepUnsampled`, α[j] = α_old[j] for j ∉ P. α: (edges, ops).
    static func rescale(new a: UnsafeMutableBufferPointer<Float>, old: [Float], pairs: [(Int, Int)], ops: Int, keepUnsampled: Bool) {
        for (e, pair) in pairs.enumerated() {
            let o = e * ops
            let members = [pair.0, pair.1].filter { $0 >= 0 }
            if keepUnsampled { for j in 0..<ops where !members.contains(j) { a[o + j] = old[o + j] } }
            guard !members.isEmpty else { continue }
            func lse(_ x: (Int) -> Float) -> Double {
                let m = members.map { Double(x($0)) }.max()!
                return m + log(members.reduce(0.0) { $0 + exp(Double(x($1)) - m) })
            }
            let offset = Float(lse { old[o + $0] } - lse { a[o + $0] })
            for j in members { a[o + j] += offset }
        }
    }

}
