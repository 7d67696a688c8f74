// The DARTS cell search space, built from a description: stem, cells of `nodes` intermediate
// nodes whose edges each hold every candidate op (plugin ops, by id), reduction cells, global
// pooling and a classifier; architecture logits per cell type, turned into mixing weights by a
// plugin gate. Each candidate on each edge has a state (active, masked, removed) so that
// strategies can mask or remove ops; masked and removed ops never run and hold no activations.
// Without architecture parameters (GSparsity: `sumOps`) every edge is the plain sum of its
// running candidates (weight 1, the gate unused), and with `scaleParameterFree` each candidate
// without parameters (pools, skip_connect at stride 1) multiplies its output by a learnable
// scalar of its own (init 1; the trainer clamps it to [0, 1] after each step).
// Shapes: input (N, Cin, H, W) → logits (N, classes). α: (edges, ops) per cell type.

import EspalierCore
import EspalierHost
import Foundation

/// What the search space is made of (saved with every run).
public struct SearchSpaceDescription: Codable, Equatable, Sendable {
    public var inputChannels = 1
    public var classes = 10
    /// C: channels of the first cells (doubled at each reduction).
    public var channels = 16
    /// Number of cells (layers).
    public var cells = 8
    /// Intermediate nodes per cell.
    public var nodes = 4
    /// Cell output = concat of the last `multiplier` nodes.
    public var multiplier = 4
    public var stemMultiplier = 3
    /// Candidate ops, by component id, in α's column order.
    public var ops: [String] = SearchSpaceDescription.dartsOps
    /// Which cells reduce; nil = at cells/3 and 2·cells/3.
    public var reductionCells: [Int]? = nil
    /// PC-DARTS partial channels K: each edge's ops see C/K channels, the rest bypass (1 = all).
    public var partialChannels = 1
    /// PC-DARTS edge normalisation: β per edge, softmax over each node's incoming edges.
    public var edgeNormalization = false
    /// Ops that stand for several candidates at once (MergeNAS): ids of ops with `build_mixed`
    /// whose `covers` parameter names the candidates they replace on every edge.
    public var mergedOps: [String] = []
    /// No architecture parameters (GSparsity): every edge sums its running candidates with weight
    /// 1; the gate is not used and α is not trained. Set for strategies with ES_REQUIRES_NO_ARCH_PARAMS.
    public var sumOps = false
    /// GSparsity: every candidate without parameters gets a learnable output scale (init 1,
    /// clamped to [0, 1]), part of its weight group; a strategy's `scale_parameter_free` parameter.
    public var scaleParameterFree = false

    public static let dartsOps = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                  "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"].map { "espalier.op.\($0)/1" }

    public init() {}

    public var reductions: [Int] { reductionCells ?? [cells / 3, 2 * cells / 3] }
    public var edgesPerCell: Int { (0..<nodes).reduce(0) { $0 + 2 + $1 } }

    /// Candidate ops by short name (`sep_conv_3x3`), as genotypes name them.
    public var opNames: [String] { ops.map(Component.shortName) }

    public func validate() throws {
        guard cells >= 1, nodes >= 1, channels >= 2, multiplier >= 1, multiplier <= nodes, stemMultiplier >= 1, !ops.isEmpty else {
            throw EspalierError.config("search space: cells, nodes, channels and ops must be positive and multiplier ≤ nodes (got \(self))")
        }
        guard Set(opNames).count == ops.count else { throw EspalierError.config("search space: two candidate ops share a short name: \(opNames)") }
        guard reductions.allSatisfy({ $0 >= 0 && $0 < cells }) else { throw EspalierError.config("search space: reduction cells \(reductions) outside 0..<\(cells)") }
        guard partialChannels >= 1, channels % partialChannels == 0 else {
            throw EspalierError.config("search space: partial channels K=\(partialChannels) must be ≥ 1 and divide C=\(channels); try K=\((1...8).filter { channels % $0 == 0 }.last ?? 1)")
        }
    }
}

/// Where a candidate stands.
public enum OpState: Int32, Codable, Sendable { case active = 0, masked = 1, removed = 2 }

/// ReLU → conv k×k → BN (the cell preprocessing when sizes match).
final class ReLUConvBN: Module {
    let conv: Conv2d, bn: BatchNorm2d
    init(_ f: ParameterFactory, name: String, cIn: Int, cOut: Int, kernel: Int = 1, stride: Int = 1, padding: Int = 0, affine: Bool) throws {
        (conv, bn) = try f.scope(name) {
            (try Conv2d(f, name: "conv", cIn: cIn, cOut: cOut, kernel: kernel, stride: stride, padding: padding),
             try BatchNorm2d(f, name: "bn", channels: cOut, affine: affine))
        }
    }
    var parameters: [Parameter] { conv.parameters + bn.parameters }
    var buffers: [Tensor] { bn.buffers }
    func callAsFunction(_ g: Graph, _ x: Variable) throws -> Variable { try bn(g, try conv(g, try g.relu(x))) }
}

/// ReLU → two 1×1 stride-2 convs (the second on x[:, :, 1:, 1:]) → concat → BN: halves H and W.
final class FactorizedReduce: Module {
    let conv1: Conv2d, conv2: Conv2d, bn: BatchNorm2d
    init(_ f: ParameterFactory, name: String, cIn: Int, cOut: Int, affine: Bool) throws {
        guard cOut % 2 == 0 else { throw EspalierError.config("FactorizedReduce needs an even channel count, got \(cOut)") }
        (conv1, conv2, bn) = try f.scope(name) {
            (try Conv2d(f, name: "conv1", cIn: cIn, cOut: cOut / 2, kernel: 1, stride: 2),
             try Conv2d(f, name: "conv2", cIn: cIn, cOut: cOut / 2, kernel: 1, stride: 2),
             try BatchNorm2d(f, name: "bn", channels: cOut, affine: affine))
        }
    }
    var parameters: [Parameter] { conv1.parameters + conv2.parameters + bn.parameters }
    var buffers: [Tensor] { bn.buffers }
    func callAsFunction(_ g: Graph, _ x: Variable) throws -> Variable {
        let r = try g.relu(x)
        let a = try conv1(g, r), b = try conv2(g, try g.crop(r, top: 1, left: 1))
        return try bn(g, try g.concatChannels([a, b]))
    }
}

/// One edge: a candidate op instance per column of α (nil for `none`, which contributes zero
/// and is never run, and for candidates a merged op stands for), each candidate's state, and the
/// merged ops on the edge with the columns each covers.
final class MixedEdge {
    var ops: [PluginOp?]
    var states: [OpState]
    var merged: [(op: PluginOp, columns: [Int])]
    /// Learnable output scales (shape [1]) of parameter-free candidates (`scaleParameterFree`); nil elsewhere.
    var scales: [Parameter?]
    init(ops: [PluginOp?], merged: [(op: PluginOp, columns: [Int])] = [], scales: [Parameter?]? = nil) {
        self.ops = ops; self.merged = merged
        self.scales = scales ?? Array(repeating: nil, count: ops.count)
        states = Array(repeating: .active, count: ops.count)
    }

    /// Candidate `o`'s output on x, times its scale when it has one: (N, C, H, W) → (N, C, H', W').
    func output(_ g: Graph, _ o: Int, _ x: Variable, state: RunState) throws -> Variable {
        let y = try ops[o]!(g, x, state: state)
        guard let s = scales[o] else { return y }
        return try g.scale(y, byElement: 0, of: g.param(s))
    }
}

/// The candidate columns a merged op stands for: its `covers` parameter, by short name.
func mergedColumns(_ comp: Component, settings: [String: String], space: SearchSpaceDescription) throws -> [Int] {
    guard comp.hasMixed else { throw EspalierError.config("\(comp.id) cannot stand for several candidates: it has no build_mixed") }
    guard let spec = comp.params.first(where: { $0.name == "covers" }) else {
        throw EspalierError.config("\(comp.id) has no 'covers' parameter naming the candidates it stands for")
    }
    let names = (settings["covers"] ?? spec.defaultValue).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    return try names.map { n in
        guard let i = space.opNames.firstIndex(of: n) else {
            throw EspalierError.config("\(comp.id) covers '\(n)', which is not a candidate of this space (\(space.opNames.joined(separator: ", ")))")
        }
        return i
    }
}

final class SearchCell {
    let reduction: Bool
    let pre0: Module & CellInput, pre1: Module & CellInput
    let edges: [MixedEdge]
    let nodes: Int, multiplier: Int
    let owner: Int32
    /// PC-DARTS partial channels K (1 = every channel goes through the ops).
    let partial: Int
    /// Column indices of `skip_connect` (P-DARTS skip dropout).
    let skipColumns: Set<Int>
    /// The preprocessed input shape (N, C, H, W) of the last forward (for candidate costs).
    var lastInputShape: [Int]? = nil

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
         opSettings: [String: [String: String]], cPrevPrev: Int, cPrev: Int, c: Int, reduction: Bool, reductionPrev: Bool) throws {
        self.reduction = reduction
        nodes = space.nodes; multiplier = space.multiplier
        partial = space.partialChannels
        skipColumns = Set(space.opNames.indices.filter { space.opNames[$0] == "skip_connect" })
        let acc = f.accountant
        let name = "cell\(index)"
        owner = acc.owner(acc.currentOwnerPath.isEmpty ? name : acc.currentOwnerPath + "/" + name)
        let components = try space.ops.map { try registry.require($0, kind: .op) }
        let mergedComponents = try space.mergedOps.map { try registry.require($0, kind: .op) }
        let mergedCols = try mergedComponents.map { try mergedColumns($0, settings: opSettings[$0.id] ?? [:], space: space) }
        let covered = Set(mergedCols.joined())
        let cOp = c / space.partialChannels
        (pre0, pre1, edges) = try f.scope(name) {
            let p0: Module & CellInput = reductionPrev
                ? try FactorizedReduce(f, name: "pre0", cIn: cPrevPrev, cOut: c, affine: false)
                : try ReLUConvBN(f, name: "pre0", cIn: cPrevPrev, cOut: c, affine: false)
            let p1 = try ReLUConvBN(f, name: "pre1", cIn: cPrev, cOut: c, affine: false)
            var edges: [MixedEdge] = []
            var e = 0
            for i in 0..<space.nodes {
                for j in 0..<(2 + i) {
                    let stride = reduction && j < 2 ? 2 : 1
                    let config = OpConfig(inChannels: cOp, outChannels: cOp, stride: stride, affine: false)
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
                    edges.append(MixedEdge(ops: ops, merged: merged, scales: scales))
                    e += 1
                }
            }
            return (p0, p1, edges)
        }
    }

    var parameters: [Parameter] {
        pre0.parameters + pre1.parameters
            + edges.flatMap { $0.ops.compactMap { $0 }.flatMap(\.parameters) + $0.merged.flatMap(\.op.parameters) + $0.scales.compactMap { $0 } }
    }
    var buffers: [Tensor] {
        pre0.buffers + pre1.buffers + edges.flatMap { $0.ops.compactMap { $0 }.flatMap(\.buffers) + $0.merged.flatMap(\.op.buffers) }
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
            var y = try edge.output(g, o, x, state: state)
            if skipDropout > 0, g.training, skipColumns.contains(o) { y = try g.dropout(y, p: skipDropout) }
            terms.append(y)
            indices.append(e * k + o)
        }
        var mixed: Variable? = terms.isEmpty ? nil : try g.weightedSum(terms, weights: weights, indices: indices)
        for m in edge.merged where m.columns.contains(where: { edge.states[$0] == .active && active[e * k + $0] != 0 }) {
            let y = try m.op(g, x, mixingWeights: try g.gather(weights, indices: m.columns.map { e * k + $0 }))
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
                 state: RunState, skipDropout: Float = 0) throws -> Variable {
        try g.accountant.withOwnerID(owner) {
            var states = [try g.accountant.withOwner("pre0") { try pre0.apply(g, s0) },
                          try g.accountant.withOwner("pre1") { try pre1.apply(g, s1) }]
            lastInputShape = states[0].shape
            let k = edges.first?.ops.count ?? 0
            let plain = partial == 1 && edgeWeights == nil && edges.allSatisfy { $0.merged.isEmpty } && skipDropout == 0
            var e = 0
            for _ in 0..<nodes {
                if !g.isRecording && plain {
                    // Forward only (scoring, evaluation): add each candidate into the node as soon as
                    // it is computed, so one candidate output is alive at a time, not all of them.
                    var sum: Tensor? = nil
                    for h in states {
                        let edge = edges[e]
                        for (o, op) in edge.ops.enumerated() {
                            guard let op, edge.states[o] == .active, active[e * k + o] != 0 else { continue }
                            let y = try op(g, h, state: state)
                            if sum == nil { sum = try Tensor.zeros(y.shape, category: .activations, accountant: g.accountant) }
                            if g.computing {
                                let scale = edge.scales[o].map { $0.value[0] } ?? 1
                                Kernels.axpy(weights.value[e * k + o] * scale, y.value.ptr, sum!.ptr, count: y.value.count)
                            }
                        }
                        e += 1
                    }
                    if let sum { states.append(g.constant(sum)); continue }
                    states.append(try zeroNode(g, states))
                    continue
                }
                if plain {
                    // The node is one weighted sum over every running candidate of every incoming edge.
                    var terms: [Variable] = [], indices: [Int] = []
                    for h in states {
                        let edge = edges[e]
                        for (o, op) in edge.ops.enumerated() {
                            guard op != nil, edge.states[o] == .active, active[e * k + o] != 0 else { continue }
                            terms.append(try edge.output(g, o, h, state: state))
                            indices.append(e * k + o)
                        }
                        e += 1
                    }
                    // Every candidate of every incoming edge off: the node is zero.
                    states.append(terms.isEmpty ? try zeroNode(g, states) : try g.weightedSum(terms, weights: weights, indices: indices))
                    continue
                }
                // Per edge (partial channels, merged ops, skip dropout), then the node sums its edges,
                // weighted by β̃ with edge normalisation.
                var outs: [Variable] = [], idx: [Int] = [], inputs: [Variable] = [], strides: [Int] = []
                for h in states {
                    if let y = try edgeOutput(g, h, edge: e, weights: weights, active: active, state: state, skipDropout: skipDropout) {
                        outs.append(y); idx.append(e); inputs.append(h); strides.append(reduction && isInputEdge(e) ? 2 : 1)
                    }
                    e += 1
                }
                if partial > 1 {
                    // PC-DARTS: every edge has a bypass, so every edge contributes (edgeOutput never returns nil).
                    states.append(try g.partialNode(heads: outs, xs: inputs, strides: strides, groups: partial, weights: edgeWeights, indices: idx))
                } else if outs.isEmpty { states.append(try zeroNode(g, states)) }
                else if let edgeWeights { states.append(try g.weightedSum(outs, weights: edgeWeights, indices: idx)) }
                else { states.append(outs.count == 1 ? outs[0] : try g.sum(outs)) }
            }
            return try g.concatChannels(Array(states.suffix(multiplier)))
        }
    }

    /// A zero node of the cell's output size.
    private func zeroNode(_ g: Graph, _ states: [Variable]) throws -> Variable {
        let ref = states[states.count - 1]
        let hw = reduction && states.count == 2 ? [(ref.shape[2] + 1) / 2, (ref.shape[3] + 1) / 2] : [ref.shape[2], ref.shape[3]]
        return try g.zeros([ref.shape[0], states[0].shape[1], hw[0], hw[1]])
    }
}

/// Conforming modules can be a cell's input preprocessing.
protocol CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable }
extension ReLUConvBN: CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable { try self(g, x) } }
extension FactorizedReduce: CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable { try self(g, x) } }

/// The supernet: weights (stem, cells, classifier) and architecture logits (α per cell type).
public final class Supernet {
    public let space: SearchSpaceDescription
    let stemConv: Conv2d, stemBN: BatchNorm2d
    let cells: [SearchCell]
    let classifier: Linear
    public let alphaNormal: Parameter, alphaReduce: Parameter
    /// PC-DARTS edge normalisation: β (edges) per cell type; nil without it.
    public let betaNormal: Parameter?, betaReduce: Parameter?
    public let gateNormal: PluginGate, gateReduce: PluginGate
    /// P-DARTS: dropout on the outputs of `skip_connect` candidates in training (0 = off).
    public var skipDropout: Float = 0
    /// The gates' mixing weights of the last recorded forward (regularizers on gate weights).
    public private(set) var lastGateWeights: (normal: Variable, reduce: Variable)? = nil

    public init(space: SearchSpaceDescription, registry: PluginRegistry, context: HostContext, gateID: String,
                gateSettings: [String: String] = [:], opSettings: [String: [String: String]] = [:], seed: UInt64) throws {
        try space.validate()
        self.space = space
        let acc = context.accountant
        let f = ParameterFactory(accountant: acc, seed: seed)
        context.factory = ParameterFactory(accountant: acc, seed: seed &+ 7919)   // plugin-declared parameters
        let cStem = space.stemMultiplier * space.channels
        (stemConv, stemBN) = try f.scope("stem") {
            (try Conv2d(f, name: "conv", cIn: space.inputChannels, cOut: cStem, kernel: 3, padding: 1),
             try BatchNorm2d(f, name: "bn", channels: cStem))
        }
        var cPrevPrev = cStem, cPrev = cStem, c = space.channels
        var reductionPrev = false
        var cells: [SearchCell] = []
        for i in 0..<space.cells {
            let reduction = space.reductions.contains(i)
            if reduction { c *= 2 }
            cells.append(try SearchCell(f, index: i, space: space, registry: registry, context: context, opSettings: opSettings,
                                        cPrevPrev: cPrevPrev, cPrev: cPrev, c: c, reduction: reduction, reductionPrev: reductionPrev))
            reductionPrev = reduction
            cPrevPrev = cPrev
            cPrev = space.multiplier * c
        }
        self.cells = cells
        classifier = try Linear(f, name: "classifier", inFeatures: cPrev, outFeatures: space.classes)
        let e = space.edgesPerCell, k = space.ops.count
        (alphaNormal, alphaReduce) = try f.scope("arch") {
            (try f.make("normal", [e, k], .normal(std: 1e-3)), try f.make("reduce", [e, k], .normal(std: 1e-3)))
        }
        if space.edgeNormalization {
            (betaNormal, betaReduce) = try f.scope("arch") {
                (try f.make("beta_normal", [e], .normal(std: 1e-3)), try f.make("beta_reduce", [e], .normal(std: 1e-3)))
            }
        } else {
            (betaNormal, betaReduce) = (nil, nil)
        }
        let gate = try registry.require(gateID, kind: .gate)
        gateNormal = try PluginGate(gate, context: context, granularity: .ops, rows: e, cols: k, settings: gateSettings, ownerPath: "arch/normal/gate")
        gateReduce = try PluginGate(gate, context: context, granularity: .ops, rows: e, cols: k, settings: gateSettings, ownerPath: "arch/reduce/gate")
    }

    /// Network weights (everything but α), in a stable order.
    public var weights: [Parameter] {
        stemConv.parameters + stemBN.parameters + cells.flatMap(\.parameters) + classifier.parameters
    }
    /// The trained architecture parameters: none when the space sums its ops (`sumOps`).
    public var archParameters: [Parameter] { space.sumOps ? [] : [alphaNormal, alphaReduce] + [betaNormal, betaReduce].compactMap { $0 } }
    /// The output scales of parameter-free candidates (`scaleParameterFree`), every cell.
    public var opScales: [Parameter] { cells.flatMap { $0.edges.flatMap { $0.scales.compactMap { $0 } } } }

    /// `sumOps`: mixing weights of 1 for every candidate (edges·ops), all marked active (the
    /// cells skip masked and removed candidates themselves).
    func unitWeights(_ g: Graph) throws -> (Variable, [UInt8]) {
        let n = space.edgesPerCell * space.ops.count
        let w = try Tensor.zeros([space.edgesPerCell, space.ops.count], category: .workspace, accountant: g.accountant)
        if g.computing { w.fill(1) }
        return (g.constant(w), Array(repeating: 1, count: n))
    }

    /// Node i's incoming edges, as ranges of edge indices.
    var nodeEdges: [Range<Int>] {
        var out: [Range<Int>] = [], e = 0
        for i in 0..<space.nodes { out.append(e..<(e + 2 + i)); e += 2 + i }
        return out
    }

    /// β̃: softmax of β over each node's incoming edges (nil without edge normalisation).
    func edgeWeights(_ g: Graph, reduction: Bool) throws -> Variable? {
        guard let beta = reduction ? betaReduce : betaNormal else { return nil }
        return try g.segmentSoftmax(g.param(beta), segments: nodeEdges)
    }
    public var buffers: [Tensor] { stemBN.buffers + cells.flatMap(\.buffers) }
    public var weightCount: Int { weights.reduce(0) { $0 + $1.count } }

    /// The gate's input: α, with masked and removed candidates set to −∞ (so a softmax
    /// renormalises over the candidates that remain, and they get no gradient).
    func gateInput(_ g: Graph, reduction: Bool) throws -> Variable {
        let alpha = g.param(reduction ? alphaReduce : alphaNormal)
        guard let cell = cells.first(where: { $0.reduction == reduction }) else { return alpha }
        let keep = cell.edges.flatMap { e in e.states.map { $0 == .active } }
        return keep.allSatisfy({ $0 }) ? alpha : try g.maskedFill(alpha, keep: keep, value: -.infinity)
    }

    /// logits (N, classes) for images (N, Cin, H, W).
    public func logits(_ g: Graph, _ x: Variable, state: RunState = RunState()) throws -> Variable {
        let (wn, an) = try g.accountant.withOwner("arch/normal") {
            space.sumOps ? try unitWeights(g) : try gateNormal(g, try gateInput(g, reduction: false), state: state)
        }
        let (wr, ar) = try g.accountant.withOwner("arch/reduce") {
            space.sumOps ? try unitWeights(g) : try gateReduce(g, try gateInput(g, reduction: true), state: state)
        }
        lastGateWeights = g.isRecording && !space.sumOps ? (wn, wr) : nil
        let (bn, br) = try g.accountant.withOwner("arch/edges") { (try edgeWeights(g, reduction: false), try edgeWeights(g, reduction: true)) }
        let stem = try g.accountant.withOwner("stem") { try stemBN(g, try stemConv(g, x)) }
        var s0 = stem, s1 = stem
        for cell in cells {
            let out = try cell.forward(g, s0, s1, weights: cell.reduction ? wr : wn, active: cell.reduction ? ar : an,
                                       edgeWeights: cell.reduction ? br : bn, state: state, skipDropout: skipDropout)
            s0 = s1
            s1 = out
        }
        return try g.accountant.withOwner("classifier") { try classifier(g, try g.globalAvgPool(s1)) }
    }

    // MARK: Op states (for strategies)

    public func opState(reduction: Bool, edge: Int, op: Int) -> OpState {
        cells.first { $0.reduction == reduction }?.edges[edge].states[op] ?? .active
    }

    /// Sets a candidate's state in every cell of the type; removing frees its parameters.
    public func setOpState(reduction: Bool, edge: Int, op: Int, _ state: OpState) throws {
        guard edge >= 0, edge < space.edgesPerCell, op >= 0, op < space.ops.count else {
            throw EspalierError.invalidArgument("no candidate \(op) on edge \(edge) (edges \(space.edgesPerCell), ops \(space.ops.count))")
        }
        for cell in cells where cell.reduction == reduction {
            if cell.edges[edge].states[op] == .removed && state != .removed {
                throw EspalierError.invalidArgument("candidate \(space.opNames[op]) on edge \(edge) was removed for good")
            }
            cell.edges[edge].states[op] = state
            if state == .removed { cell.edges[edge].ops[op] = nil; cell.edges[edge].scales[op] = nil }
        }
    }

    /// Architecture logits of a cell type as rows of floats.
    public func logits(reduction: Bool) -> [[Float]] {
        let a = (reduction ? alphaReduce : alphaNormal).value, k = space.ops.count
        return (0..<space.edgesPerCell).map { e in (0..<k).map { a.isVirtual ? 0 : a[e * k + $0] } }
    }

    /// Mixing weights of a cell type as rows of floats (gate applied in evaluation mode).
    public func mixingWeights(reduction: Bool, accountant: MemoryAccountant) throws -> [[Float]] {
        if space.sumOps {
            // Plain sum: 1 for every candidate that runs, 0 for `none`, masked and removed ones.
            let names = space.opNames
            return (0..<space.edgesPerCell).map { e in
                names.indices.map { o in names[o] != "none" && opState(reduction: reduction, edge: e, op: o) == .active ? 1 : 0 }
            }
        }
        let g = Graph(accountant: accountant)
        g.training = false
        let gate = reduction ? gateReduce : gateNormal
        let w = try g.noGrad { try gate(g, try gateInput(g, reduction: reduction)).weights }
        let k = space.ops.count
        return (0..<space.edgesPerCell).map { e in (0..<k).map { w.value.isVirtual ? 0 : w.value[e * k + $0] } }
    }

    /// β̃ of a cell type as floats (edges), or nil without edge normalisation.
    public func edgeWeights(reduction: Bool, accountant: MemoryAccountant) throws -> [Float]? {
        let g = Graph(accountant: accountant)
        guard let w = try g.noGrad({ try edgeWeights(g, reduction: reduction) }) else { return nil }
        return (0..<space.edgesPerCell).map { w.value.isVirtual ? 0 : w.value[$0] }
    }

    /// softmax(α) of a cell type over each edge's active candidates (masked and removed ones
    /// get 0; an edge with none active is all 0).
    func activeSoftmax(reduction: Bool) -> [[Float]] {
        let k = space.ops.count
        return logits(reduction: reduction).enumerated().map { e, row in
            let on = (0..<k).map { opState(reduction: reduction, edge: e, op: $0) == .active }
            guard let m = (0..<k).filter({ on[$0] }).map({ row[$0] }).max() else { return Array(repeating: 0, count: k) }
            let x = (0..<k).map { on[$0] ? Float(Foundation.exp(Double(row[$0] - m))) : 0 }
            let sum = x.reduce(0, +)
            return x.map { $0 / sum }
        }
    }

    /// The DARTS rule on the current mixing weights; with edge normalisation each edge's weights
    /// are scaled by β̃ first, so edges rank by op weight × β̃ (PC-DARTS). A sampled gate's
    /// evaluation weights are one-hot (every edge would tie), so its search ranks by the
    /// architecture distribution softmax(α) over the active candidates instead (GDAS, ProxylessNAS).
    public func genotype(accountant: MemoryAccountant) throws -> Genotype {
        let names = space.opNames
        func ranked(_ reduction: Bool) throws -> [[Float]] {
            let w = (reduction ? gateReduce : gateNormal).isSampled
                ? activeSoftmax(reduction: reduction) : try mixingWeights(reduction: reduction, accountant: accountant)
            guard let beta = try edgeWeights(reduction: reduction, accountant: accountant) else { return w }
            return w.enumerated().map { e, row in row.map { $0 * beta[e] } }
        }
        let (n, nc) = try Genotype.derive(weights: try ranked(false), opNames: names, nodes: space.nodes)
        let (r, rc) = try Genotype.derive(weights: try ranked(true), opNames: names, nodes: space.nodes)
        var g = Genotype(normal: n, normalConcat: nc, reduce: r, reduceConcat: rc)
        g.opIDs = Dictionary(uniqueKeysWithValues: zip(names, space.ops))
        return g
    }
}
