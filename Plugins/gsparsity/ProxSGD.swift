// espalier.regularizer.proxsgd/1: ProxSGD with group sparsity (Yang et al., ICLR 2020, as used by
// GSparsity, Chatzimichailidis et al.). With `owns_update=true` (the default) the host runs no SGD
// step: this proximal step IS the weight update, on every weight the host hands over (the
// weight groups "group/…" and the rest, "ungrouped"), with the gradients in the targets:
//   v ← (1−ρ)·v + ρ·g                          (momentum; ρ = `momentum`, 0.8)
//   b = x − v/τ, τ = 1
//   x̂ = max(0, 1 − μ_g/‖b‖_g)·b                (block soft-thresholding over the whole group)
//   x ← x + lr·(x̂ − x)                          (lr = `lr`, 1e-3, constant; 0 = the host's)
// with μ_g = μ/√|g| (|g| the number of weights in the group) for weight groups and μ_g = 0 for
// "ungrouped" (the authors' code runs the same ProxSGD on the non-prunable weights with no
// regularisation, so x ← x − lr·v there). With `owns_update=false` it is a plain proximal step
// after the host's SGD with the host's learning rate: x ← max(0, 1 − lr·μ_g/‖x‖_g)·x. Momentum buffers v (one per part, shape
// of the part) are allocated through the host as optimiser state. Facts from the authors' code
// (ProxSGD_for_groups.py): v.mul_(1−momentum).add_(momentum·grad), τ = 1, a = μ/dim^0.5 ("div"
// normalisation), x_hat = clamp(1 − a/‖b‖, min=0)·b, x += lr·(x_hat − x). Not here: their clamp of
// x̂ for scale parameters to [0, 1]; this host clamps the scales after the step instead.
// Saved state (format 1): μ and every momentum buffer v by target name, so that a resumed search
// takes the same steps as an uninterrupted one.

import EspalierPluginKit

final class ProxSGDRegularizer: ProximalRegularizer, StatefulComponent {
    static let id = "espalier.regularizer.proxsgd/1"

    private let host: PluginHost
    private(set) var mu: Double
    private let lr: Double
    private let rho: Double
    private let normalize: Bool
    private let ownsUpdate: Bool
    /// Momentum v per target name, one buffer per part (part element counts beside).
    private var momentum: [String: [(buffer: UnsafeMutablePointer<Float>, count: Int)]] = [:]

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        mu = try params.double("mu")
        lr = try params.double("lr")
        rho = try params.double("momentum")
        normalize = try params.string("normalization") == "sqrt"
        ownsUpdate = try params.bool("owns_update")
        guard mu >= 0, mu.isFinite else { throw PluginError.invalidArgument("\(Self.id): mu must be a finite number >= 0 (got \(mu))") }
        guard lr >= 0, lr <= 1 else { throw PluginError.invalidArgument("\(Self.id): lr must be in [0, 1] (got \(lr)); 0 = the host's learning rate") }
        guard rho > 0, rho <= 1 else { throw PluginError.invalidArgument("\(Self.id): momentum ρ must be in (0, 1] (got \(rho)); v ← (1−ρ)v + ρg") }
    }

    deinit { for parts in momentum.values { for p in parts { host.free(UnsafeMutableRawPointer(p.buffer)) } } }

    func setValue(_ name: String, _ value: Double) throws {
        guard name == "mu" else { throw PluginError.unsupported("\(Self.id) has one settable value, 'mu' (got '\(name)')") }
        guard value >= 0, value.isFinite else { throw PluginError.invalidArgument("\(Self.id): mu must be a finite number >= 0 (got \(value))") }
        mu = value
    }

    /// μ_g of a target: μ/√|g| for weight groups (μ with normalization=none), 0 for "ungrouped".
    func groupMu(_ t: RegularizerTarget) -> Double {
        guard t.name.hasPrefix("group/") else { return 0 }
        let size = t.values.reduce(0) { $0 + $1.count }
        return normalize ? mu / Double(max(size, 1)).squareRoot() : mu
    }

    /// The momentum buffers of a target (zero on first use; reallocated if its parts change).
    private func buffers(_ t: RegularizerTarget) throws -> [(buffer: UnsafeMutablePointer<Float>, count: Int)] {
        if let b = momentum[t.name], b.map(\.count) == t.values.map(\.count) { return b }
        return try allocateBuffers(t.name, counts: t.values.map(\.count))
    }

    /// Fresh zero buffers of `counts` elements for target `name` (replacing and freeing its old ones).
    /// `zeroed` false: only allocated (a dry run's blocks hold no data).
    private func allocateBuffers(_ name: String, counts: [Int], zeroed: Bool = true) throws -> [(buffer: UnsafeMutablePointer<Float>, count: Int)] {
        freeBuffers(name)
        let fresh = try counts.map { n -> (buffer: UnsafeMutablePointer<Float>, count: Int) in
            let raw = try host.allocate(bytes: max(n, 1) * 4, category: .optimizerState, owner: "regularizer/proxsgd/" + name)
            let p = raw.bindMemory(to: Float.self, capacity: max(n, 1))
            if zeroed { p.initialize(repeating: 0, count: max(n, 1)) }
            return (p, n)
        }
        momentum[name] = fresh
        return fresh
    }

    private func freeBuffers(_ name: String) {
        for p in momentum[name] ?? [] { host.free(UnsafeMutableRawPointer(p.buffer)) }
        momentum[name] = nil
    }

    /// Format 1: μ, then per target (sorted by name) its name and its parts' momentum.
    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.double(mu)
        w.int(momentum.count)
        for name in momentum.keys.sorted() {
            w.string(name)
            w.int(momentum[name]!.count)
            for p in momentum[name]! { w.floats(UnsafeBufferPointer(start: p.buffer, count: p.count)) }
        }
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let savedMu = try r.double("mu")
        guard savedMu >= 0, savedMu.isFinite else { throw PluginError.invalidArgument("\(Self.id): saved state: mu is \(savedMu)") }
        var loaded: [(name: String, parts: [[Float]])] = []
        for _ in 0..<(try r.count("momentum targets", itemBytes: 16)) {
            let name = try r.string("target name")
            loaded.append((name, try (0..<r.count("parts of \(name)", itemBytes: 8)).map { _ in try r.floats("momentum of \(name)") }))
        }
        try r.finish()
        mu = savedMu
        for name in Array(momentum.keys) { freeBuffers(name) }
        for (name, parts) in loaded {
            for (buffer, values) in zip(try allocateBuffers(name, counts: parts.map(\.count)), parts) {
                buffer.buffer.update(from: values, count: values.count)
            }
        }
    }

    func proximal(state: RunState, targets: [RegularizerTarget], lr hostLR: Double) throws {
        let step = lr > 0 ? lr : hostLR
        // Buffers of targets that are gone (removed groups) are freed.
        let names = Set(targets.map(\.name))
        for name in Array(momentum.keys) where !names.contains(name) { freeBuffers(name) }
        // A dry run (a memory prediction): the momentum buffers a real step allocates, untouched
        // (the host's dry-run blocks are tokens without room for data); nothing is computed.
        if state.isDryRun {
            if ownsUpdate {
                for t in targets where t.kind == .weightGroup && momentum[t.name]?.map(\.count) != t.values.map(\.count) {
                    _ = try allocateBuffers(t.name, counts: t.values.map(\.count), zeroed: false)
                }
            }
            return
        }
        for t in targets where t.kind == .weightGroup {
            for (v, g) in zip(t.values, t.grads) where g.raw.data != nil {
                try v.requireSameShape(as: g, "\(Self.id): gradient of '\(t.name)'")
            }
            if ownsUpdate { try update(t, lr: step) } else { shrink(t, by: hostLR * groupMu(t)) }
        }
    }

    /// The ProxSGD update of one target (x, v in place).
    private func update(_ t: RegularizerTarget, lr: Double) throws {
        let muG = groupMu(t)
        let vs = try buffers(t)
        let rho = Float(self.rho)
        // v ← (1−ρ)v + ρg, and ‖b‖² with b = x − v.
        var norm2 = 0.0
        for (i, x) in t.values.enumerated() {
            guard let xp = x.data else { continue }
            let gp = t.grads[i].data, vp = vs[i].buffer
            var acc: Float = 0
            for j in 0..<x.count {
                vp[j] = (1 - rho) * vp[j] + rho * (gp?[j] ?? 0)
                let b = xp[j] - vp[j]
                acc += b * b
            }
            norm2 += Double(acc)
        }
        let norm = norm2.squareRoot()
        // x̂ = factor·b, factor = max(0, 1 − μ_g/‖b‖) (exactly 0 when ‖b‖ ≤ μ_g); x ← x + lr(x̂ − x).
        let factor = muG == 0 ? 1 : (norm > muG ? 1 - muG / norm : 0)
        let f = Float(factor), a = Float(lr)
        for (i, x) in t.values.enumerated() {
            guard let xp = x.data else { continue }
            let vp = vs[i].buffer
            for j in 0..<x.count {
                let xhat = f * (xp[j] - vp[j])
                xp[j] += a * (xhat - xp[j])
            }
        }
    }

    /// The proximal operator of lr·μ_g‖·‖ after someone else's update: x ← max(0, 1 − κ/‖x‖)·x.
    private func shrink(_ t: RegularizerTarget, by kappa: Double) {
        guard kappa > 0 else { return }
        var norm2 = 0.0
        for x in t.values { if let b = x.buffer { norm2 += b.reduce(0.0) { $0 + Double($1 * $1) } } }
        let norm = norm2.squareRoot()
        let f = Float(norm > kappa ? 1 - kappa / norm : 0)
        for x in t.values { if let b = x.buffer { for j in b.indices { b[j] *= f } } }
    }
}
