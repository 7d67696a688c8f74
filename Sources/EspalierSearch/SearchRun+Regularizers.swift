// Regularizer plugins in the common trainer. In every architecture step the host calls each
// regularizer's `loss` with the targets it asks for:
//   ES_TARGET_ARCH          "arch/normal", "arch/reduce": α (edges, ops) and its gradient; the
//                           term's gradient is added after the backward of the data loss.
//   ES_TARGET_GATE_WEIGHTS  "gate/{normal,reduce}/{memory,flops}": the gates' mixing weights of
//                           this forward and per-candidate costs (edges, ops) from the accountant;
//                           the term joins the graph, so its gradient flows back through the gate.
//                           Hyper-connected: "gate/cellI/{memory,flops}" per cell, and
//                           "gate/cellI/inputs/{memory,flops}" for its inter-cell inputs (inputs, 1).
// After every weight step each regularizer's `proximal` runs on its targets (ES_TARGET_WEIGHT_GROUP:
// "group/{normal,reduce}/edgeE/OP" = that op's parameters on edge E in every cell of the type,
// with its output scales when the space has them).
// A proximal regularizer whose `owns_update` parameter is true (ProxSGD) IS the weight update:
// the host runs no SGD step; after the backward and the gradient clip it calls that regularizer's
// `proximal` with every group target plus one target "ungrouped" (ES_TARGET_WEIGHT_GROUP, parts =
// every weight in no group: stem, cell preprocessing, classifier), each with its gradients, and
// the host's learning rate of the step. Output scales are clamped to [0, 1] after every step.
// Without α (`sumOps`) the group norms ‖θ_g‖ are published as search values
// "group_norm/{normal,reduce}/edgeE/OP" (read with get_value) whenever the run derives.

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

/// Per-candidate costs of a cell type, (edges, ops) summed over the cells of the type.
public struct CandidateCosts: Sendable {
    /// Bytes per candidate, row-major (edges, ops).
    public var memory: [Float]
    /// Forward FLOPs per candidate, (edges, ops).
    public var flops: [Float]
}

extension SearchRun {
    /// A regularizer term on the gate weights of the last forward, added to the graph's loss.
    /// Targets per slot ("gate/normal/…", "gate/reduce/…"; hyper-connected "gate/cellI/…") and,
    /// hyper-connected, per cell's inter-cell inputs ("gate/cellI/inputs/…").
    func gateWeightTerm(_ g: Graph) throws -> (Variable, Double)? {
        let regs = regularizers.filter { $0.hasLoss && $0.wants(.gateWeights) }
        guard !regs.isEmpty, !supernet.lastSlotWeights.isEmpty else { return nil }
        let costs = try slotCosts()
        let names = supernet.slotNames
        var items: [(name: String, w: Variable, c: CandidateCosts)] = supernet.lastSlotWeights.enumerated().map { (names[$0], $1, costs.slots[$0]) }
        for (i, w) in supernet.lastInputWeights.enumerated() where i < costs.inputs.count { items.append(("cell\(i)/inputs", w, costs.inputs[i])) }
        var targets: [RegularizerTarget] = [], grads: [Tensor] = []
        for (name, w, c) in items {
            let grad = try Tensor.zeros(w.shape, category: .workspace, accountant: accountant)
            let mem = try Tensor.from(c.memory, shape: w.shape, category: .workspace, accountant: accountant)
            let fl = try Tensor.from(c.flops, shape: w.shape, category: .workspace, accountant: accountant)
            targets.append(RegularizerTarget(kind: .gateWeights, name: "gate/\(name)/memory", values: [w.value], grads: [grad], costs: [mem]))
            targets.append(RegularizerTarget(kind: .gateWeights, name: "gate/\(name)/flops", values: [w.value], grads: [grad], costs: [fl]))
            grads.append(grad)
        }
        var total = 0.0
        for r in regs { total += try r.loss(targets, state: state) }
        return (try g.externalTerm(value: Float(total), inputs: items.map(\.w), grads: grads), total)
    }

    /// Adds the architecture-logit regularizers' gradients into α's gradient; returns their value.
    func applyArchRegularizers() throws -> Double {
        let regs = regularizers.filter { $0.hasLoss && $0.wants(.arch) }
        guard !regs.isEmpty else { return 0 }
        let targets = try [("arch/normal", supernet.alphaNormal), ("arch/reduce", supernet.alphaReduce)].map { name, p in
            RegularizerTarget(kind: .arch, name: name, values: [p.value], grads: [try p.ensureGrad()])
        }
        var total = 0.0
        for r in regs { total += try r.loss(targets, state: state) }
        return total
    }

    /// Weight groups: op `o` on edge `e` across every cell of a type (GSparsity's groups), in a
    /// fixed order (normal then reduce, edge, op), each with its parameters; groups without any are left out.
    func weightGroups() -> [(name: String, params: [Parameter])] {
        var out: [(name: String, params: [Parameter])] = []
        let names = supernet.space.opNames
        for reduction in [false, true] {
            let cells = supernet.cells.filter { $0.reduction == reduction }
            guard let first = cells.first else { continue }
            for e in first.edges.indices {
                for o in names.indices {
                    let params = cells.flatMap { ($0.edges[e].ops[o]?.parameters ?? []) + [$0.edges[e].scales[o]].compactMap { $0 } }
                    if !params.isEmpty { out.append(("group/\(reduction ? "reduce" : "normal")/edge\(e)/\(names[o])", params)) }
                }
            }
        }
        return out
    }

    /// The weight groups as regularizer targets.
    func weightGroupTargets() throws -> [RegularizerTarget] {
        try weightGroups().map { group in
            RegularizerTarget(kind: .weightGroup, name: group.name, values: group.params.map(\.value),
                              grads: try group.params.map { try $0.ensureGrad() })
        }
    }

    /// Proximal steps after a weight update (learning rate of the step).
    func applyProximal() throws {
        let regs = regularizers.filter { $0.hasProximal && $0 !== updateOwner }
        guard !regs.isEmpty, !accountant.isDryRun else { return }
        for r in regs {
            var targets: [RegularizerTarget] = []
            if r.wants(.weightGroup) { targets += try weightGroupTargets() }
            if r.wants(.arch) {
                targets += [("arch/normal", supernet.alphaNormal), ("arch/reduce", supernet.alphaReduce)].map { name, p in
                    RegularizerTarget(kind: .arch, name: name, values: [p.value], grads: [p.grad])
                }
            }
            try r.proximal(targets, learningRate: Double(weightOptimizer.learningRate), state: state)
        }
    }

    /// Whether a regularizer replaces the SGD step: a proximal step and a parameter `owns_update`
    /// that resolves to true (the user's setting or its default).
    static func ownsUpdate(_ r: PluginRegularizer, settings: [String: String]) throws -> Bool {
        let c = r.component
        guard let spec = c.params.first(where: { $0.name == "owns_update" }) else { return false }
        let text = (settings["owns_update"] ?? spec.defaultValue).lowercased()
        switch text {
        case "1", "true", "yes", "on": break
        case "0", "false", "no", "off": return false
        default: throw EspalierError.config("\(c.id): owns_update must be true or false (got '\(text)')")
        }
        guard r.hasProximal else { throw EspalierError.config("\(c.id) says owns_update=true but has no proximal step to update with") }
        return true
    }

    /// Every weight as targets for an update-owning regularizer: the groups, then "ungrouped".
    func ownedUpdateTargets() throws -> [RegularizerTarget] {
        let groups = try weightGroupTargets()
        var grouped = Set<ObjectIdentifier>()
        for cell in supernet.cells {
            for edge in cell.edges {
                for p in edge.ops.compactMap({ $0 }).flatMap(\.parameters) + edge.scales.compactMap({ $0 }) { grouped.insert(ObjectIdentifier(p)) }
            }
        }
        let rest = supernet.weights.filter { !grouped.contains(ObjectIdentifier($0)) }
        guard !rest.isEmpty else { return groups }
        return groups + [RegularizerTarget(kind: .weightGroup, name: "ungrouped", values: rest.map(\.value), grads: try rest.map { try $0.ensureGrad() })]
    }

    /// The weight update of an update-owning regularizer (instead of SGD).
    func applyOwnedUpdate() throws {
        // A dry run calls it too: the owner's own buffers (ProxSGD's momentum) are part of the peak.
        guard let r = updateOwner else { return }
        try r.proximal(try ownedUpdateTargets(), learningRate: Double(weightOptimizer.learningRate), state: state)
    }

    /// Output scales of parameter-free candidates back into [0, 1].
    func clampOpScales() {
        guard supernet.space.scaleParameterFree, !accountant.isDryRun else { return }
        for p in supernet.opScales { p.value[0] = min(max(p.value[0], 0), 1) }
    }

    /// ‖θ_g‖ of every weight group (the op's parameters and scale on one edge in every cell of a
    /// type), by group name ("group/normal/edge3/sep_conv_3x3").
    public func groupNorms() throws -> [String: Double] {
        var out: [String: Double] = [:]
        guard !accountant.isDryRun else { return out }
        for t in try weightGroupTargets() {
            out[t.name] = t.values.reduce(0.0) { $0 + Kernels.sumSquares($1.ptr, count: $1.count) }.squareRoot()
        }
        return out
    }

    /// The parameters of every weight group, by group name (the same groups as the targets).
    public func weightGroupParameters() -> [String: [Parameter]] {
        Dictionary(uniqueKeysWithValues: weightGroups().map { ($0.name, $0.params) })
    }

    /// Publishes ‖θ_g‖ as search values "group_norm/…" for the strategy (get_value); a removed
    /// group's value is dropped.
    func publishGroupNorms() {
        guard let norms = try? groupNorms(), !norms.isEmpty else { return }
        for key in services.published.keys where key.hasPrefix("group_norm/") { services.published[key] = nil }
        for (name, v) in norms { services.published["group_norm/" + name.dropFirst("group/".count)] = v }
    }

    /// Costs of every candidate (bytes: parameters, gradients and momentum, plus the activations
    /// its forward keeps for backward; and forward FLOPs), measured once per op instance in a
    /// dry-run accountant on the edge's input shape, summed over the cells of each type.
    /// Masked and removed candidates (and `none`) cost 0. (Hyper-connected: the first cell of each type.)
    public func candidateCosts() throws -> (normal: CandidateCosts, reduce: CandidateCosts) {
        let s = try slotCosts().slots
        return (s[supernet.slot(reduction: false)], s[supernet.slot(reduction: true)])
    }


    /// Costs per slot (edges, ops; summed over the slot's cells) and, hyper-connected, per cell's
    /// inter-cell inputs (inputs, 1: its preprocessing on the earlier output). Masked and removed
    /// candidates and inputs cost 0.
    public func slotCosts() throws -> (slots: [CandidateCosts], inputs: [CandidateCosts]) {
        let k = supernet.space.ops.count, edges = supernet.space.edgesPerCell
        if updates.costCache == nil {
            let zero = CandidateCosts(memory: Array(repeating: 0, count: edges * k), flops: Array(repeating: 0, count: edges * k))
            var slots = Array(repeating: zero, count: supernet.slotCount)
            var inputs: [CandidateCosts] = []
            for cell in supernet.cells {
                let slot = supernet.slot(of: cell)
                if cell.hyper {
                    var c = CandidateCosts(memory: Array(repeating: 0, count: cell.inputs.count), flops: Array(repeating: 0, count: cell.inputs.count))
                    for (j, m) in cell.inputs.enumerated() {
                        guard let m, let shape = cell.lastEarlierShapes?[j] else { continue }
                        let cost = try measureCost(shape, parameters: m.parameters) { g, x in try m.apply(g, x) }
                        (c.memory[j], c.flops[j]) = (Float(cost.bytes), Float(cost.flops))
                    }
                    inputs.append(c)
                }
                guard let shape = cell.lastInputShape else { continue }
                for (e, edge) in cell.edges.enumerated() {
                    // Edges from the two cell inputs see the input size; in a reduction cell the
                    // later ones see the halved size.
                    var s = shape
                    s[1] /= cell.partial
                    if cell.reduction && !cell.isInputEdge(e) { s[2] = (s[2] + 1) / 2; s[3] = (s[3] + 1) / 2 }
                    for (o, op) in edge.ops.enumerated() {
                        guard let op else { continue }
                        let cost = try measureCost(s, parameters: op.parameters) { g, x in try op(g, x) }
                        slots[slot].memory[e * k + o] += Float(cost.bytes)
                        slots[slot].flops[e * k + o] += Float(cost.flops)
                    }
                }
            }
            updates.costCache = (slots, inputs)
        }
        var (slots, inputs) = updates.costCache!
        for s in slots.indices {
            for i in 0..<(edges * k) where supernet.opState(slot: s, edge: i / k, op: i % k) != .active {
                slots[s].memory[i] = 0; slots[s].flops[i] = 0
            }
        }
        for (i, cell) in supernet.cells.enumerated() where cell.hyper && i < inputs.count {
            for j in cell.inputStates.indices where cell.inputStates[j] != .active || j >= inputs[i].memory.count {
                if j < inputs[i].memory.count { inputs[i].memory[j] = 0; inputs[i].flops[j] = 0 }
            }
        }
        return (slots, inputs)
    }
}

/// The bytes and FLOPs of one module run on an input of `shape`, measured in a dry run:
/// activations it keeps plus 3× its parameters (values, gradients, momentum).
/// `throughBackward`: the bytes are the peak of its forward and backward instead (what it keeps,
/// and what its backward holds on top while it runs), its input's gradient not the first one
/// (another consumer's is there, shared): the costliest way a cell meets its backward, where
/// the input gradient it adds goes to a tensor of its own while the other one lives — an input-
/// sized tensor more than a first gradient costs, at the moment its scratch is largest — and its
/// weights' gradients made, as a weight step makes them (whatever step is measuring it: a
/// sampled gate's first forward of a prediction is an α step's, weights frozen, whose backward
/// holds less scratch).
func measureCost(_ shape: [Int], parameters: [Parameter], throughBackward: Bool = false,
                 _ body: (Graph, Variable) throws -> Variable) throws -> (bytes: Double, flops: Double) {
    let dry = MemoryAccountant(mode: .dryRun)
    let g = Graph(accountant: dry)
    let x = try g.leaf(Tensor(shape: shape, category: .activations, accountant: dry))
    let frozen = parameters.map { !$0.requiresGrad }
    defer { for (p, f) in zip(parameters, frozen) where f { p.requiresGrad = false } }
    if throughBackward {
        for p in parameters { p.requiresGrad = true }
        g.presetSharedGradient(of: x, try Tensor(shape: shape, category: .activationGradients, accountant: dry))
    }
    let before = dry.currentBytes(ownerPrefix: "").total
    let bytes: Int
    if throughBackward {
        dry.resetPeak()
        let y = try body(g, x)
        try g.backward(y, gradient: try Tensor(shape: y.shape, category: .activationGradients, accountant: dry))
        bytes = dry.peakTotal - before
    } else {
        _ = try body(g, x)   // its output is not what it keeps
        bytes = dry.currentBytes(ownerPrefix: "").total - before
    }
    return (Double(bytes) + Double(3 * parameters.reduce(0) { $0 + $1.count } * 4), Double(g.flops))
}
