// One cell of the supernet: its input preprocessing, its edges (MixedEdge) and nodes, and the
// forward that weighs every running candidate (DARTS, partial channels, hyper-connected inputs,
// the concat aggregator). Not the gates or α: the Supernet owns those and passes the weights in.

import EspalierCore
import EspalierHost
import Foundation

final class SearchCell {
    let index: Int
    let reduction: Bool
    /// The preprocessing of the cell's first input: [pre0] (DARTS: the cell before the previous
    /// one), or one per earlier output in a hyper-connected space (nil once removed).
    var inputs: [(Module & CellInput)?]
    /// Hyper-connected: each inter-cell input's state (active, masked, removed).
    var inputStates: [OpState]
    let hyper: Bool
    let pre1: Module & CellInput
    let edges: [MixedEdge]
    let nodes: Int, multiplier: Int
    /// Concat aggregator: each node's batch norm after its 1×1 convolution, and the owner of the
    /// node's activations, `cellI/nodeN/concat` (both empty for the sum).
    let nodeNorms: [BatchNorm2d]
    let nodeOwners: [Int32]
    let owner: Int32
    /// PC-DARTS partial channels K (1 = every channel goes through the ops).
    let partial: Int
    /// Column indices of `skip_connect` (P-DARTS skip dropout).
    let skipColumns: Set<Int>
    /// The preprocessed input shape (N, C, H, W) of the last forward (for candidate costs).
    var lastInputShape: [Int]? = nil
    /// Hyper-connected: the shapes of the earlier outputs of the last forward (input costs).
    var lastEarlierShapes: [[Int]]? = nil

    /// True for edges from the two cell inputs (j < 2 of their node), false for those from nodes.
    func isInputEdge(_ e: Int) -> Bool {
        var start = 0
        for i in 0..<nodes {
            if e < start + 2 + i { return e - start < 2 }
            start += 2 + i
        }
        return false
    }

    init(_ f: ParameterFactory, index: Int, space: SearchSpaceDescription, registry: PluginRegistry, context: HostContext,
         opSettings: [String: [String: String]], cPrevPrev: Int, cPrev: Int, c: Int, reduction: Bool, reductionPrev: Bool,
         earlier: [(channels: Int, ratio: Int)]? = nil) throws {
        self.index = index
        self.reduction = reduction
        hyper = earlier != nil
        nodes = space.nodes; multiplier = space.multiplier
        partial = space.partialChannels
        skipColumns = Set(space.opNames.indices.filter { space.opNames[$0] == "skip_connect" })
        let acc = f.accountant
        let name = "cell\(index)"
        owner = acc.owner(acc.currentOwnerPath.isEmpty ? name : acc.currentOwnerPath + "/" + name)
        let cellPath = acc.ownerPath(owner)
        nodeOwners = space.aggregator == .concat ? (0..<space.nodes).map { acc.owner(cellPath + "/node\($0)/concat") } : []
        let components = try space.ops.map { try registry.require($0, kind: .op) }
        let mergedComponents = try space.mergedOps.map { try registry.require($0, kind: .op) }
        let mergedCols = try mergedComponents.map { try mergedColumns($0, settings: opSettings[$0.id] ?? [:], space: space) }
        let covered = Set(mergedCols.joined())
        let cOp = c / space.partialChannels
        (inputs, pre1, edges, nodeNorms) = try f.scope(name) {
            let p0: [(Module & CellInput)?]
            if let earlier {
                // Each earlier output to C channels at the previous cell's resolution.
                p0 = try earlier.enumerated().map { j, src -> (Module & CellInput)? in
                    switch src.ratio {
                    case 1: return try ReLUConvBN(f, name: "input\(j)", cIn: src.channels, cOut: c, affine: false)
                    case 2: return try FactorizedReduce(f, name: "input\(j)", cIn: src.channels, cOut: c, affine: false)
                    default: return try ReLUConvBN(f, name: "input\(j)", cIn: src.channels, cOut: c, kernel: 1, stride: src.ratio, affine: false)
                    }
                }
            } else {
                p0 = [reductionPrev
                    ? try FactorizedReduce(f, name: "pre0", cIn: cPrevPrev, cOut: c, affine: false)
                    : try ReLUConvBN(f, name: "pre0", cIn: cPrevPrev, cOut: c, affine: false)]
            }
            let p1 = try ReLUConvBN(f, name: "pre1", cIn: cPrev, cOut: c, affine: false)
            var edges: [MixedEdge] = [], norms: [BatchNorm2d] = []
            var e = 0
            for i in 0..<space.nodes {
                // Concat aggregator: the node's 1×1 conv has fan-in T·C over its T candidates.
                let candidates = (2 + i) * components.indices.filter { Component.shortName(components[$0].id) != "none" }.count
                for j in 0..<(2 + i) {
                    let stride = reduction && j < 2 ? 2 : 1
                    let config = OpConfig(inChannels: cOp, outChannels: cOp, stride: stride, affine: space.affineOps)
                    let ops: [PluginOp?] = try components.enumerated().map { col, comp in
                        if Component.shortName(comp.id) == "none" || covered.contains(col) { return nil }
                        return try PluginOp(comp, context: context, config: config, settings: opSettings[comp.id] ?? [:],
                                            ownerPath: acc.currentOwnerPath + "/edge\(e)/" + Component.shortName(comp.id))
                    }
                    let merged = try zip(mergedComponents, mergedCols).map { comp, cols in
                        (op: try PluginOp(comp, context: context, config: config, settings: opSettings[comp.id] ?? [:],
                                          ownerPath: acc.currentOwnerPath + "/edge\(e)/" + Component.shortName(comp.id)), columns: cols)
                    }
                    // GSparsity: a learnable output scale for every candidate without parameters.
                    let scales: [Parameter?] = try ops.enumerated().map { col, op in
                        guard space.scaleParameterFree, let op, op.parameters.isEmpty else { return nil }
                        return try f.make("edge\(e)/\(space.opNames[col])/scale", [1], .ones, decay: false)
                    }
                    let columns: [Parameter?] = try ops.enumerated().map { col, op in
                        guard space.aggregator == .concat, op != nil else { return nil }
                        return try f.make("node\(i)/concat/edge\(e).\(space.opNames[col])", [cOp, cOp, 1, 1], .uniformFanIn(candidates * cOp))
                    }
                    edges.append(MixedEdge(ops: ops, merged: merged, scales: scales, concatColumns: columns))
                    e += 1
                }
                if space.aggregator == .concat { norms.append(try BatchNorm2d(f, name: "node\(i)/concat/bn", channels: cOp, affine: false)) }
            }
            return (p0, p1, edges, norms)
        }
        inputStates = Array(repeating: .active, count: inputs.count)
    }

    var parameters: [Parameter] {
        inputs.compactMap { $0 }.flatMap(\.parameters) + pre1.parameters
            + edges.flatMap { $0.ops.compactMap { $0 }.flatMap(\.parameters) + $0.merged.flatMap(\.op.parameters) + $0.scales.compactMap { $0 } }
            + edges.flatMap { $0.concatColumns.compactMap { $0 } } + nodeNorms.flatMap(\.parameters)
    }
    var buffers: [Tensor] {
        inputs.compactMap { $0 }.flatMap(\.buffers) + pre1.buffers + edges.flatMap { $0.ops.compactMap { $0 }.flatMap(\.buffers) + $0.merged.flatMap(\.op.buffers) }
            + nodeNorms.flatMap(\.buffers)
    }

    /// The output of one edge: Σ_o w_o·op_o(h) over its running candidates (+ merged ops), or nil
    /// if nothing runs. With partial channels the ops see the first C/K channels; the rest bypass
    /// (2×2 max-pool on reduction edges), then concat and channel shuffle (PC-DARTS).
    func edgeOutput(_ g: Graph, _ h: Variable, edge e: Int, weights: Variable, active: [UInt8], state: RunState, skipDropout: Float) throws -> Variable? {
        let edge = edges[e], k = edge.ops.count
        let c = h.shape[1], cOp = c / partial
        let x = partial > 1 ? try g.narrow(h, channels: 0..<cOp) : h
        var terms: [Variable] = [], indices: [Int] = []
        for (o, op) in edge.ops.enumerated() {
            guard op != nil, edge.states[o] == .active, active[e * k + o] != 0 else { continue }
            var y = try candidate(g, edge: e, o, x, state: state)
            if skipDropout > 0, g.training, skipColumns.contains(o) { y = try g.dropout(y, p: skipDropout) }
            terms.append(y)
            indices.append(e * k + o)
        }
        var mixed: Variable? = terms.isEmpty ? nil : try g.weightedSum(terms, weights: weights, indices: indices)
        for m in edge.merged where m.columns.contains(where: { edge.states[$0] == .active && active[e * k + $0] != 0 }) {
            let w = try g.gather(weights, indices: m.columns.map { e * k + $0 })
            let segment = "cell\(index)/edge\(e)/\(Component.shortName(m.op.component.id))"
            let name = recompute.recomputes(segment, at: .ops) && m.op.isRecomputable ? segment : nil
            let y = try recomputed(g, name, inputs: [x, w]) { try m.op(g, x, mixingWeights: w) }
            mixed = try mixed.map { try g.add($0, y) } ?? y
        }
        guard partial > 1 else { return mixed }
        // The ops' part of the edge (N, C/K, H', W'); the node mixes it with the bypass (partialNode).
        let stride = reduction && isInputEdge(e) ? 2 : 1
        return try mixed ?? g.zeros([h.shape[0], cOp, stride == 2 ? h.shape[2] / 2 : h.shape[2], stride == 2 ? h.shape[3] / 2 : h.shape[3]])
    }

    /// s0, s1 (N, C_prev_prev/C_prev, H, W) → (N, multiplier·C, H', W'). `weights`: (edges, ops);
    /// `edgeWeights`: β̃ (edges), or nil without edge normalisation.
    func forward(_ g: Graph, _ s0: Variable, _ s1: Variable, weights: Variable, active: [UInt8], edgeWeights: Variable? = nil,
                 state: RunState, skipDropout: Float = 0, worstCase: Bool = false) throws -> Variable {
        try forward(g, earlier: [s0], s1, weights: weights, active: active, edgeWeights: edgeWeights, state: state, skipDropout: skipDropout,
                    worstCase: worstCase)
    }

    /// The cell's first input: pre0(s0) (DARTS), or Σ_j w_j·input_j(earlier_j) over the running
    /// inter-cell inputs (hyper-connected; weight 1 each without a gate), nil if none runs.
    func firstInput(_ g: Graph, earlier: [Variable], handed: HandedInput? = nil, inputWeights: Variable?, inputActive: [UInt8]?) throws -> Variable? {
        guard hyper else {
            guard let handed else { return try g.accountant.withOwner("pre0") { try inputs[0]!.apply(g, earlier[0]) } }
            let s0 = handed.value!
            handed.value = nil   // the caller kept no other reference: s0 goes when pre0 has read it
            return try g.accountant.withOwner("pre0") { try inputs[0]!.apply(g, s0) }
        }
        var terms: [Variable] = [], indices: [Int] = []
        for (j, x) in earlier.enumerated() {
            guard let m = inputs[j], inputStates[j] == .active, (inputActive?[j] ?? 1) != 0 else { continue }
            terms.append(try g.accountant.withOwner("input\(j)") { try m.apply(g, x) })
            indices.append(j)
        }
        guard !terms.isEmpty else { return nil }
        return try g.accountant.withOwner("inputs") {
            if let inputWeights { return try g.weightedSum(terms, weights: inputWeights, indices: indices) }
            return terms.count == 1 ? terms[0] : try g.sum(terms)
        }
    }

    /// `earlier`: [s0] (DARTS), or every earlier output (hyper-connected); s1: the previous cell's output.
    /// `worstCase`: a prediction with a sampled gate (`active` is a stand-in draw): each edge runs
    /// the candidates that keep the most in place of the drawn ones (`pickCostliest`).
    /// `handed` (DARTS, without tape): s0 handed over in place of `earlier`, freed once pre0 has read it.
    func forward(_ g: Graph, earlier: [Variable], handed: HandedInput? = nil, _ s1: Variable, weights: Variable, active: [UInt8],
                 inputWeights: Variable? = nil, inputActive: [UInt8]? = nil, edgeWeights: Variable? = nil, state: RunState, skipDropout: Float = 0,
                 worstCase: Bool = false) throws -> Variable {
        var active = active
        return try g.accountant.withOwnerID(owner) {
            // A nil state (every inter-cell input pruned): the edges from it are skipped.
            var states: [Variable?] = [try firstInput(g, earlier: earlier, handed: handed, inputWeights: inputWeights, inputActive: inputActive),
                                       try g.accountant.withOwner("pre1") { try pre1.apply(g, s1) }]
            lastInputShape = states[1]!.shape
            if hyper { lastEarlierShapes = earlier.map(\.shape) }
            let plain = partial == 1 && edgeWeights == nil && edges.allSatisfy { $0.merged.isEmpty } && skipDropout == 0
            var e = 0
            for _ in 0..<nodes {
                if worstCase {
                    for (j, h) in states.enumerated() { if let h { try pickCostliest(&active, edge: e + j, input: h) } }
                }
                let (firstEdge, incoming, now) = (e, states, active)
                let segment = "cell\(index)/node\(states.count - 2)"
                let isRecomputed = recompute.recomputes(segment, at: .edges) && nodeIsRecomputable(firstEdge: firstEdge, count: incoming.count)
                states.append(try recomputed(g, isRecomputed ? segment : nil, inputs: incoming.compactMap { $0 }) {
                    try self.node(g, states: incoming, firstEdge: firstEdge, weights: weights, active: now, edgeWeights: edgeWeights, state: state,
                                  skipDropout: skipDropout, plain: plain)
                })
                e += incoming.count
            }
            // The states the output does not take are read no more: without tape they go now,
            // not after the concat (the preprocessed inputs, at the cell's peak).
            for i in 0..<max(0, states.count - multiplier) { states[i] = nil }
            return try g.concatChannels(states.suffix(multiplier).map { $0! })
        }
    }

    /// s0, s1 → the cell's output, as `forward(g, s0, s1, …)`, with s0 handed over: a forward without
    /// tape frees the output of cell i−2 once this cell's pre0 has read it, before its nodes run.
    func forward(_ g: Graph, handing s0: HandedInput, _ s1: Variable, weights: Variable, active: [UInt8], edgeWeights: Variable? = nil,
                 state: RunState, skipDropout: Float = 0, worstCase: Bool = false) throws -> Variable {
        precondition(!hyper, "a hyper-connected cell reads every earlier output")
        return try forward(g, earlier: [], handed: s0, s1, weights: weights, active: active, edgeWeights: edgeWeights, state: state,
                           skipDropout: skipDropout, worstCase: worstCase)
    }

    /// Node `n` (the one after `states`): its incoming edges, which start at `firstEdge`, mixed.
    private func node(_ g: Graph, states: [Variable?], firstEdge: Int, weights: Variable, active: [UInt8], edgeWeights: Variable?,
                      state: RunState, skipDropout: Float, plain: Bool) throws -> Variable {
        let n = states.count - 2, k = edges.first?.ops.count ?? 0
        var e = firstEdge
        if !nodeNorms.isEmpty {
            return try concatNode(g, n, states: states, firstEdge: e, weights: weights, active: active, state: state, skipDropout: skipDropout)
        }
        if !g.isRecording && plain {
            // Forward only (scoring, evaluation): add each candidate into the node as soon as
            // it is computed, so one candidate output is alive at a time, not all of them.
            var sum: Tensor? = nil
            for h in states {
                guard let h else { e += 1; continue }
                let edge = edges[e]
                for (o, op) in edge.ops.enumerated() {
                    guard let op, edge.states[o] == .active, active[e * k + o] != 0 else { continue }
                    // (A dry run has no weights to read; it makes the same allocations with any factor.)
                    let w = g.computing ? weights.value[e * k + o] * (edge.scales[o].map { $0.value[0] } ?? 1) : 1
                    if let sum {
                        // The op's last batch norm adds into the sum as it normalises (PluginOp.accumulate).
                        try op.accumulate(g, h, into: sum, scale: w, state: state)
                        continue
                    }
                    let y = try op(g, h, state: state)
                    sum = try Tensor.zeros(y.shape, category: .activations, accountant: g.accountant)
                    if g.computing { Kernels.axpy(w, y.value.ptr, sum!.ptr, count: y.value.count) }
                }
                e += 1
            }
            if let sum { return g.constant(sum) }
            return try zeroNode(g, states)
        }
        if plain {
            // The node is one weighted sum over every running candidate of every incoming edge.
            var terms: [Variable] = [], indices: [Int] = []
            for h in states {
                guard let h else { e += 1; continue }
                let edge = edges[e]
                for (o, op) in edge.ops.enumerated() {
                    guard op != nil, edge.states[o] == .active, active[e * k + o] != 0 else { continue }
                    terms.append(try candidate(g, edge: e, o, h, state: state))
                    indices.append(e * k + o)
                }
                e += 1
            }
            // Every candidate of every incoming edge off: the node is zero.
            return terms.isEmpty ? try zeroNode(g, states) : try g.weightedSum(terms, weights: weights, indices: indices)
        }
        // Per edge (partial channels, merged ops, skip dropout), then the node sums its edges,
        // weighted by β̃ with edge normalisation.
        var outs: [Variable] = [], idx: [Int] = [], inputs: [Variable] = [], strides: [Int] = []
        for h in states {
            guard let h else { e += 1; continue }
            if let y = try edgeOutput(g, h, edge: e, weights: weights, active: active, state: state, skipDropout: skipDropout) {
                outs.append(y); idx.append(e); inputs.append(h); strides.append(reduction && isInputEdge(e) ? 2 : 1)
            }
            e += 1
        }
        if partial > 1 {
            // PC-DARTS: every edge has a bypass, so every edge contributes (edgeOutput never returns nil).
            return try g.partialNode(heads: outs, xs: inputs, strides: strides, groups: partial, weights: edgeWeights, indices: idx)
        }
        if outs.isEmpty { return try zeroNode(g, states) }
        if let edgeWeights { return try g.weightedSum(outs, weights: edgeWeights, indices: idx) }
        return outs.count == 1 ? outs[0] : try g.sum(outs)
    }

    // MARK: Recomputation

    /// What this cell recomputes inside itself: its ops or its nodes' edges (a whole cell is the
    /// supernet's segment; set before each forward).
    var recompute = RecomputePlan.none

    /// True when every op of the cell may be run again in backward (composed ops always; ops with
    /// their own kernels when they declare it).
    var isRecomputable: Bool { nodeIsRecomputable(firstEdge: 0, count: edges.count) }

    /// True when every op on edges firstEdge ..< firstEdge + count may be run again.
    private func nodeIsRecomputable(firstEdge: Int, count: Int) -> Bool {
        edges[firstEdge..<(firstEdge + count)].allSatisfy { e in e.ops.allSatisfy { $0?.isRecomputable ?? true } && e.merged.allSatisfy(\.op.isRecomputable) }
    }

    /// `body` as a recomputed segment named `name` (nil: not recomputed).
    private func recomputed(_ g: Graph, _ name: String?, inputs: [Variable], _ body: @escaping () throws -> Variable) throws -> Variable {
        guard let name else { return try body() }
        return try g.recomputed(name, inputs: inputs, body)
    }

    /// Candidate o of edge e on h (its scale applied), a recomputed segment at the ops level.
    private func candidate(_ g: Graph, edge e: Int, _ o: Int, _ h: Variable, state: RunState) throws -> Variable {
        let edge = edges[e]
        let segment = "cell\(index)/edge\(e)/op\(o)"
        let name = recompute.recomputes(segment, at: .ops) && edge.ops[o]!.isRecomputable ? segment : nil
        return try recomputed(g, name, inputs: [h]) { try edge.output(g, o, h, state: state) }
    }

    /// FiGS's concat aggregator for node n, whose edges start at `firstEdge`: BN(Σ_t w_t·(W_t ∗ y_t))
    /// over the running candidates t of its incoming edges — the 1×1 convolution of the
    /// concatenated w_t·y_t, one column block W_t at a time, so no concat copy is made and a
    /// candidate that does not run costs nothing. Forward only (scoring, evaluation), each W_t ∗ y_t
    /// is added into the node as soon as it is computed. A zero node when nothing runs.
    private func concatNode(_ g: Graph, _ n: Int, states: [Variable?], firstEdge: Int, weights: Variable, active: [UInt8],
                            state: RunState, skipDropout: Float) throws -> Variable {
        let k = edges.first?.ops.count ?? 0
        var terms: [Variable] = [], indices: [Int] = []
        var sum: Tensor? = nil
        for (j, h) in states.enumerated() {
            guard let h else { continue }
            let e = firstEdge + j, edge = edges[e]
            for (o, op) in edge.ops.enumerated() {
                guard op != nil, edge.states[o] == .active, active[e * k + o] != 0, let column = edge.concatColumns[o] else { continue }
                var y = try candidate(g, edge: e, o, h, state: state)
                if skipDropout > 0, g.training, skipColumns.contains(o) { y = try g.dropout(y, p: skipDropout) }
                let z = try g.accountant.withOwnerID(nodeOwners[n]) { try g.conv2d(y, g.param(column), stride: 1, padding: 0, dilation: 1, groups: 1) }
                if g.isRecording { terms.append(z); indices.append(e * k + o); continue }
                if sum == nil { sum = try g.accountant.withOwnerID(nodeOwners[n]) { try Tensor.zeros(z.shape, category: .activations, accountant: g.accountant) } }
                if g.computing { Kernels.axpy(weights.value[e * k + o], z.value.ptr, sum!.ptr, count: z.value.count) }
            }
        }
        let mixed: Variable
        if let sum { mixed = g.constant(sum) }
        else if !terms.isEmpty { mixed = try g.accountant.withOwnerID(nodeOwners[n]) { try g.weightedSum(terms, weights: weights, indices: indices) } }
        else { return try zeroNode(g, states) }
        return try nodeNorms[n](g, mixed)   // the batch norm's own owner: cellI/nodeN/concat/bn
    }

    /// Bytes each candidate costs on an edge's input (what its forward keeps, or the peak of its
    /// forward and backward; + 3× parameters), measured once per candidate, shape and measure in a
    /// dry run of its own.
    private var candidateBytes: [String: Double] = [:]

    /// A prediction with a sampled gate: the most that a draw can hold above the one the dry run
    /// ran, on any one edge at any one moment (`pickCostliest`); the prediction adds it.
    private(set) var drawMargin = 0

    /// A prediction's worst case for a sampled gate on edge e: the gate's stand-in draw marks how
    /// many candidates run (k); the k running candidates that keep the most bytes on `input` are
    /// marked active instead, so at every moment each edge holds at least what any draw's would
    /// hold there once it has run. The edge that is running holds more than what it keeps: its
    /// scratch, and in its backward the gradients it makes (`measureCost` with `throughBackward`
    /// takes the costliest way it meets them). No one choice of draw is the worst at every moment —
    /// the largest keepers make the forward's end the highest, an op that keeps little may hold
    /// the most while its backward runs, and which one a real draw puts on which edge is the
    /// gate's — so the dry run's peak, with the keepers everywhere, is raised by the most any
    /// edge's running candidate can hold above the least the dry run's holds there: its highest
    /// peak less the smallest of the k keepers' kept bytes (`drawMargin`). Two dry runs, one by
    /// each order, fell short of real draws (GdasProxylessSearchTests' every-draw test).
    private func pickCostliest(_ active: inout [UInt8], edge e: Int, input h: Variable) throws {
        let edge = edges[e], k = edge.ops.count
        let drawn = (0..<k).reduce(0) { $0 + (active[e * k + $1] != 0 ? 1 : 0) }
        var shape = h.shape
        shape[1] /= partial
        var running: [(o: Int, kept: Double, peak: Double)] = []
        for (o, op) in edge.ops.enumerated() {
            guard let op, edge.states[o] == .active else { continue }
            func cost(throughBackward: Bool) throws -> Double {
                let key = "\(e)|\(o)|\(shape)|\(throughBackward)"
                if let bytes = candidateBytes[key] { return bytes }
                let bytes = try measureCost(shape, parameters: op.parameters, throughBackward: throughBackward) { g, x in try op(g, x) }.bytes
                candidateBytes[key] = bytes
                return bytes
            }
            running.append((o, try cost(throughBackward: false), try cost(throughBackward: true)))
        }
        let keepers = running.sorted { $0.kept != $1.kept ? $0.kept > $1.kept : $0.o < $1.o }.prefix(drawn)
        if let least = keepers.last?.kept, let highest = running.map(\.peak).max() {
            drawMargin = max(drawMargin, Int(max(0, highest - least)))
        }
        let picked = Set(keepers.map(\.o))
        for o in 0..<k { active[e * k + o] = picked.contains(o) ? 1 : 0 }
    }

    /// A zero node of the cell's output size (states[1], the previous cell's, always exists).
    private func zeroNode(_ g: Graph, _ states: [Variable?]) throws -> Variable {
        let ref = states[states.count - 1]!
        let hw = reduction && states.count == 2 ? [(ref.shape[2] + 1) / 2, (ref.shape[3] + 1) / 2] : [ref.shape[2], ref.shape[3]]
        return try g.zeros([ref.shape[0], states[1]!.shape[1], hw[0], hw[1]])
    }
}

/// A cell input its caller hands over, keeping no reference of its own (a forward without tape):
/// the cell drops it as soon as it has read it (SearchCell.firstInput).
final class HandedInput {
    var value: Variable?
    init(_ value: Variable) { self.value = value }
}
