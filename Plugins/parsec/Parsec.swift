// espalier.strategy.parsec/1: PARSEC (Casale, Gordon & Fusi, 2019, "Probabilistic Neural
// Architecture Search"). The prior p(a|π) = Π_edges softmax(π_e)[a_e] over one op per edge and
// cell type, with π the architecture logits α (arch_view). Each step, in plan_step:
//   1. sample S children a_s ~ p(a|π) from the host's RNG; each child masks every other
//      candidate of every edge (set_op_state MASKED), so only its ops run;
//   2. score each on the step's validation batch: L_s = batch_loss(validation) (mean CE, ABI 1.1);
//   3. importance weights ω_s = p(y|a_s) / Σ_j p(y|a_j) with the batch likelihood
//      p(y|a) = exp(−N·L/T) (N the batch size, T = `temperature`, 1 in the paper);
//   4. ĝ = Σ_s ω_s ∇π log p(a_s|π), where ∇π_e log p = onehot(a_s,e) − softmax(π_e): the
//      self-normalised importance-sampling estimate of ∇π log E_{p(a|π)}[p(y|a)] (the marginal
//      likelihood the paper maximises; consistent, bias O(1/S)). −ĝ is written into α's gradient
//      (the descent direction of −log p(y|π), for logs and tests) and π ascends: π += prior_lr·ĝ
//      (the host's architecture optimiser does not step: the plan is weights-only);
//   5. one child drawn from ω stays unmasked and the plan is ES_STEP_WEIGHTS_ONLY, so the host's
//      weight step runs on that child alone: a one-sample estimate of the paper's Σ_s ω_s ∇w L_s
//      with the memory of one child. after_step restores the op states.
// Candidates already masked or removed when the step begins are never sampled. No derive: the
// host applies the DARTS rule to the gate's weights, softmax(π) = the prior's probabilities.
// In a dry run π has no data: children are drawn uniformly and nothing is updated.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import EspalierPluginKit

final class ParsecStrategy: StrategyComponent {
    static let id = "espalier.strategy.parsec/1"

    let host: PluginHost
    let samples: Int
    let priorLR: Double
    let temperature: Double
    let sampleNone: Bool
    /// Candidates this strategy masked for the current step, as (cell type, edge, op); restored in after_step.
    private var masked: Set<Candidate> = []

    struct Candidate: Hashable { let type: Int, edge: Int, op: Int }

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        samples = try params.int("samples")
        priorLR = try params.double("prior_lr")
        temperature = try params.double("temperature")
        sampleNone = try params.bool("sample_none")
        guard samples >= 1 else { throw PluginError.invalidArgument("\(Self.id): samples must be >= 1 (got \(samples))") }
        guard priorLR >= 0, priorLR.isFinite else { throw PluginError.invalidArgument("\(Self.id): prior_lr must be a finite number >= 0 (got \(priorLR))") }
        guard temperature > 0, temperature.isFinite else {
            throw PluginError.invalidArgument("\(Self.id): temperature must be a finite number > 0 (got \(temperature))")
        }
    }

    func planStep(state: RunState) throws -> StepPlan {
        guard let search = host.search else { throw PluginError.unsupported("\(Self.id): no search is running") }
        guard search.hasBatchLoss else {
            throw PluginError.unsupported("\(Self.id) needs the batch_loss search service of ABI 1.1; this host's table has \(search.structSize) bytes")
        }
        try restore(search)
        let info = try search.spaceInfo()
        let edges = info.edges, ops = info.ops
        let isNone = (0..<ops).map { search.opName($0).map(Self.shortName) == "none" }

        // The candidates each edge may choose (active now), and p(·|π_e) over them: probs[t][e][k].
        var available: [[[Int]]] = []
        var probs: [[[Double]]] = []
        for t in 0..<2 {
            let logits = try search.archView(cellType: t).logits
            try checkShape(logits, edges: edges, ops: ops)
            var av: [[Int]] = [], pr: [[Double]] = []
            for e in 0..<edges {
                var cands: [Int] = []
                for k in 0..<ops where sampleNone || !isNone[k] {
                    if try search.opState(cellType: t, edge: e, op: k) == .active { cands.append(k) }
                }
                var p = [Double](repeating: 0, count: ops)
                if !cands.isEmpty {
                    if let data = logits.data {
                        let m = cands.map { Double(data[e * ops + $0]) }.max()!
                        var z = 0.0
                        for k in cands { p[k] = exp(Double(data[e * ops + k]) - m); z += p[k] }
                        for k in cands { p[k] /= z }
                    } else {
                        for k in cands { p[k] = 1 / Double(cands.count) }
                    }
                }
                av.append(cands); pr.append(p)
            }
            available.append(av); probs.append(pr)
        }

        // 1–2. Sample and score S children.
        var children: [[[Int]]] = []   // children[s][t][e]: the chosen op, or −1 for an edge with no candidate
        var losses: [Double] = []
        var batch = 1
        for _ in 0..<samples {
            var child: [[Int]] = []
            for t in 0..<2 {
                child.append(try (0..<edges).map { e in try draw(probs[t][e], among: available[t][e]) })
            }
            try apply(child, available: available, search)
            let (loss, n) = try search.batchLoss(.validation)
            guard loss.isFinite else { throw PluginError.invalidArgument("\(Self.id): a sampled child's validation loss is \(loss); the weights diverged") }
            children.append(child); losses.append(loss); batch = max(n, 1)
        }

        // 3. ω_s ∝ exp(−N·L_s/T), normalised (shifted by the best for stability).
        let logw = losses.map { -Double(batch) * $0 / temperature }
        let top = logw.max()!
        var omega = logw.map { exp($0 - top) }
        let z = omega.reduce(0, +)
        omega = omega.map { $0 / z }

        // 4. ĝ = Σ_s ω_s (onehot(a_s,e) − p_e): written as −ĝ into α's gradient; π += prior_lr·ĝ.
        if !state.isDryRun {
            for t in 0..<2 {
                let (logits, grad) = try search.archView(cellType: t)
                guard let pi = logits.data else { continue }
                let g = grad.data
                for e in 0..<edges {
                    for k in 0..<ops {
                        guard available[t][e].contains(k) else { g?[e * ops + k] = 0; continue }
                        var est = 0.0
                        for s in 0..<samples { est += omega[s] * ((children[s][t][e] == k ? 1 : 0) - probs[t][e][k]) }
                        g?[e * ops + k] = Float(-est)
                        pi[e * ops + k] += Float(priorLR * est)
                    }
                }
            }
        }

        // 5. The weight step trains one child, drawn from ω.
        let chosen = try draw(omega, among: Array(0..<samples))
        try apply(children[chosen], available: available, search)
        return StepPlan(.weightsOnly)
    }

    func afterStep(state: RunState) throws {
        guard let search = host.search else { return }
        try restore(search)
    }

    /// Index drawn from `p` restricted to `among` (p sums to 1 over them); −1 if `among` is empty.
    private func draw(_ p: [Double], among: [Int]) throws -> Int {
        guard let last = among.last else { return -1 }
        let u = try host.randomUniform()
        var c = 0.0
        for k in among {
            c += p[k]
            if u < c { return k }
        }
        return last
    }

    /// Leaves only `child`'s op active on every edge (among the available candidates).
    private func apply(_ child: [[Int]], available: [[[Int]]], _ search: SearchServices) throws {
        for t in 0..<2 {
            for (e, cands) in available[t].enumerated() {
                for k in cands {
                    let c = Candidate(type: t, edge: e, op: k)
                    if k == child[t][e] {
                        if masked.remove(c) != nil { try search.setOpState(cellType: t, edge: e, op: k, .active) }
                    } else if !masked.contains(c) {
                        try search.setOpState(cellType: t, edge: e, op: k, .masked)
                        masked.insert(c)
                    }
                }
            }
        }
    }

    /// Makes every candidate this strategy masked active again.
    private func restore(_ search: SearchServices) throws {
        for c in masked where try search.opState(cellType: c.type, edge: c.edge, op: c.op) == .masked {
            try search.setOpState(cellType: c.type, edge: c.edge, op: c.op, .active)
        }
        masked.removeAll()
    }

    /// `espalier.op.none/1` → `none` (the last dotted part before the revision).
    static func shortName(_ id: String) -> String {
        let base = id.split(separator: "/").first.map(String.init) ?? id
        return String(base.split(separator: ".").last ?? Substring(base))
    }

    private func checkShape(_ v: TensorView, edges: Int, ops: Int) throws {
        guard v.shape == [edges, ops] else {
            throw PluginError.internalError("\(Self.id): arch_view has shape \(v.shape), the space has (\(edges), \(ops))")
        }
    }
}
