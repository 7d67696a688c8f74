// espalier.strategy.dropnas/1: DropNAS (Hong et al., IJCAI 2020), grouped operation dropout.
// Each step is single-level (weights and α from the same training batch). Before the step
// (`plan_step`) every edge's candidates are split into two groups — parametric {sep_conv_3x3,
// sep_conv_5x5, dil_conv_3x3, dil_conv_5x5} and parameter-free {max_pool_3x3, avg_pool_3x3,
// skip_connect, none}, found by short name; other ops are never dropped — and each active op of a
// group is masked (ES_OP_MASKED: never run, no memory, −∞ at the gate so the softmax renormalises
// over the kept ops) with probability r^(1/|group|), the whole group drawn again if every op was
// dropped. Masks are drawn separately for the normal and the reduce cell type. After the step
// (`after_step`) the kept α of each edge with a dropped op is shifted by one constant so that the
// dropped ops keep their share of probability, and the masks are lifted (REMOVED ops and ops
// masked by someone else are never touched).
// The shift follows the authors' code (wiljohnhong/DropNAS, models/search_cnn.py,
// `generate_weights` / `adjust_alphas`): ratio = Σ_kept e^α_old / Σ_all e^α_old before the step;
// after it, k = log(ratio/(1−ratio) · Σ_dropped e^α / Σ_kept e^α) is added to every kept α.
// With `restore_dropped` (default) the dropped α are first reset to their pre-step values (an
// optimiser's momentum or weight decay cannot move an op that was off), and k reduces to
// log(Σ_kept e^α_old / Σ_kept e^α_new): the kept ops' total mass, hence the dropped ones', is what
// it was before the step. Warm-up epochs (drop rate 0, α frozen in the code) are weight-only steps.
// In a dry run (a memory prediction) nothing is dropped: the prediction is the costliest draw.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class DropNASStrategy: StrategyComponent {
    static let id = "espalier.strategy.dropnas/1"
    static let parametric = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    static let parameterFree = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "none"]

    private let host: PluginHost
    /// r: the probability that a whole group is dropped (before resampling).
    private let dropRate: Double
    private let warmupEpochs: Int
    private let restoreDropped: Bool

    /// One edge of one cell type with a dropped op in the current step.
    private struct EdgeMask {
        var cellType: Int, edge: Int
        var kept: [Int], dropped: [Int]
    }
    /// What `plan_step` masked, undone by `after_step`.
    private var masks: [EdgeMask] = []
    /// α of each cell type before the step, (edges·ops).
    private var alphaBefore: [[Float]] = []

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        dropRate = try params.double("drop_rate")
        guard dropRate.isFinite, dropRate >= 0, dropRate <= 0.99 else {
            throw PluginError.invalidArgument("\(Self.id): drop_rate r must be in [0, 0.99] (each op of a group of n is dropped with probability r^(1/n); got \(dropRate))")
        }
        warmupEpochs = try params.int("warmup_epochs")
        guard warmupEpochs >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): warmup_epochs must be >= 0 (got \(warmupEpochs))")
        }
        restoreDropped = try params.bool("restore_dropped")
    }

    private func services() throws -> SearchServices {
        guard let s = host.search else {
            throw PluginError.unsupported("\(Self.id) acts through the search services; it runs only inside a search")
        }
        return s
    }

    /// Short name of a component id: "espalier.op.sep_conv_3x3/1" → "sep_conv_3x3".
    static func shortName(_ id: String) -> String {
        let base = id.split(separator: "/").first.map(String.init) ?? id
        return String(base.split(separator: ".").last ?? Substring(base))
    }

    func planStep(state: RunState) throws -> StepPlan {
        if state.epoch < warmupEpochs { return StepPlan(.weightsOnly) }
        // A prediction (dry run) bounds every draw: the costliest draw drops nothing (each op is
        // kept with probability > 0), so a dry step runs every candidate.
        if state.isDryRun { return StepPlan(.singleLevel) }
        let search = try services()
        guard masks.isEmpty else {
            throw PluginError.internalError("\(Self.id): plan_step called again before after_step lifted the previous masks")
        }
        let info = try search.spaceInfo()
        let names = (0..<info.ops).map { search.opName($0).map(Self.shortName) ?? "" }
        let groups = [Self.parametric, Self.parameterFree].map { g in (0..<info.ops).filter { g.contains(names[$0]) } }
        alphaBefore = []
        for t in 0..<info.cellTypes {
            let logits = try search.archView(cellType: t).logits
            alphaBefore.append(logits.buffer.map(Array.init) ?? [])
            for e in 0..<info.edges {
                let active = try (0..<info.ops).filter { try search.opState(cellType: t, edge: e, op: $0) == .active }
                var dropped: [Int] = []
                for group in groups {
                    let members = group.filter { active.contains($0) }
                    guard !members.isEmpty else { continue }
                    let p = pow(dropRate, 1 / Double(members.count))
                    // Independent drops; a group that lost every op is drawn again (the code's generate_mask).
                    while true {
                        var drawn: [Int] = []
                        for o in members where try host.randomUniform() < p { drawn.append(o) }
                        if drawn.count < members.count { dropped += drawn; break }
                    }
                }
                guard !dropped.isEmpty else { continue }
                for o in dropped { try search.setOpState(cellType: t, edge: e, op: o, .masked) }
                masks.append(EdgeMask(cellType: t, edge: e, kept: active.filter { !dropped.contains($0) }, dropped: dropped))
            }
        }
        return StepPlan(.singleLevel)
    }

    func afterStep(state: RunState) throws {
        guard !masks.isEmpty else { return }
        let search = try services()
        defer { masks = [] }
        let info = try search.spaceInfo()
        var views: [Int: TensorView] = [:]
        for m in masks where m.cellType < alphaBefore.count {
            if views[m.cellType] == nil { views[m.cellType] = try search.archView(cellType: m.cellType).logits }
            guard let a = views[m.cellType]?.raw.data, alphaBefore[m.cellType].count == info.edges * info.ops else { continue }
            let old = alphaBefore[m.cellType], row = m.edge * info.ops
            if restoreDropped { for o in m.dropped { a[row + o] = old[row + o] } }
            // k = [LSE_kept(old) − LSE_dropped(old)] + [LSE_dropped(now) − LSE_kept(now)]
            //   = log(ratio / (1 − ratio) · Σ_dropped e^α / Σ_kept e^α), ratio = kept share before the step.
            let k = logSumExp(m.kept.map { old[row + $0] }) - logSumExp(m.dropped.map { old[row + $0] })
                + logSumExp(m.dropped.map { a[row + $0] }) - logSumExp(m.kept.map { a[row + $0] })
            guard k.isFinite else { continue }
            for o in m.kept { a[row + o] += Float(k) }
        }
        // Lift the masks (every other state stays as it was).
        for m in masks {
            for o in m.dropped { try search.setOpState(cellType: m.cellType, edge: m.edge, op: o, .active) }
        }
    }
}

/// log Σ e^x in double precision (−∞ for an empty list).
func logSumExp(_ xs: [Float]) -> Double {
    guard let m = xs.map(Double.init).max(), m > -.infinity else { return -.infinity }
    return m + log(xs.reduce(0.0) { $0 + exp(Double($1) - m) })
}
