// The DARTS cell search space, built from a description: stem, cells of `nodes` intermediate
// nodes whose edges each hold every candidate op (plugin ops, by id), reduction cells, global
// pooling and a classifier; architecture logits per cell type, turned into mixing weights by a
// plugin gate. Each candidate on each edge has a state (active, masked, removed) so that
// strategies can mask or remove ops; masked and removed ops never run and hold no activations.
// Without architecture parameters (GSparsity: `sumOps`) every edge is the plain sum of its
// running candidates (weight 1, the gate unused), and with `scaleParameterFree` each candidate
// without parameters (pools, skip_connect at stride 1) multiplies its output by a learnable
// scalar of its own (init 1; the trainer clamps it to [0, 1] after each step).
// Hyper-connected (Bonsai-Net's relaxed space, `hyperConnected`): every cell is distinct — its
// own α (edges, ops) and its own gate, a "slot" per cell instead of one per cell type — and cell i
// takes the previous cell's output (hard-wired, through pre1) plus a gated sum of every earlier
// output (stem, cells 0…i−2; cell 0 takes the stem twice, as in DARTS): each such input j has its
// own preprocessing (ReLU-conv1×1-BN; factorized reduce at half the resolution, a strided
// ReLU-conv1×1-BN beyond) to the cell's C channels at the previous cell's resolution, and its
// own logit in a per-cell (inputs, 1) tensor gated at ES_GATE_INPUTS granularity. Its memory is
// owned by `cellI/inputJ` (preprocessing) and `cellI/inputs` (the sum). A pruned or removed
// input runs nothing and allocates nothing; with every input pruned the cell's edges from that
// input are skipped. Reductions stay where they were put (the configured depth's positions), so
// a grown network keeps its cells. Auxiliary heads (`auxiliaryCells`, Bonsai's old classifiers):
// global pooling + linear after those cells; in training the loss adds auxiliaryWeight · CE of each.
// Concat aggregator (FiGS §3.3, `aggregator` .concat): a node is BN(conv1×1(concat_t w_t·y_t))
// over the running candidates t of its incoming edges instead of Σ_t w_t·y_t; the convolution's
// weight is kept as one block W_t per candidate (`cellI/nodeN/concat/edgeE.OP`), so masked and
// removed candidates cost nothing, and its activations are owned by `cellI/nodeN/concat`.
// Shapes: input (N, Cin, H, W) → logits (N, classes). α: (edges, ops) per slot.

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
    /// Bonsai-Net's relaxed space: distinct cells (α per cell), each taking the previous cell plus
    /// a gated sum of all earlier outputs. A strategy's `hyper_connected` parameter, or --hyper-connected.
    public var hyperConnected = false
    /// Cells followed by an auxiliary classifier (global pooling + linear); Bonsai-Net's old classifiers.
    public var auxiliaryCells: [Int] = []
    /// Weight w of each auxiliary head's loss: loss = CE(main) + w·Σ CE(aux) (training only).
    public var auxiliaryWeight = 0.4
    /// How a node combines its candidates: their (weighted) sum, or FiGS's concat aggregator,
    /// node = BN(conv1×1(concat of w_t·y_t)) back to C channels. `--aggregator`, or a strategy's
    /// `aggregator` parameter (FiGS's).
    public var aggregator: NodeAggregator = .sum
    /// Build the candidate ops as the evaluation network has them (`affine` in their config: batch
    /// norm with γ/β, no batch norm after pools) instead of DARTS's search ops (BN without γ/β).
    /// GSparsity's `affine_ops`: a conv followed by BN without γ/β computes the same function at any
    /// scale of its weights, so their gradient has no component along them (⟨∂L/∂W, W⟩ = 0) and
    /// nothing resists the group penalty's shrinking; γ gives the group a scale the loss depends on.
    public var affineOps = false

    public static let dartsOps = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                  "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"].map { "espalier.op.\($0)/1" }

    public init() {}

    /// Which cells reduce. Hyper-connected: positions past the current depth are left out (a
    /// growing network keeps its reductions where the full depth has them).
    public var reductions: [Int] {
        let r = reductionCells ?? [cells / 3, 2 * (cells / 3) + 2 * (cells % 3) / 3]  // ⌊2·cells/3⌋ without overflow
        return hyperConnected ? r.filter { $0 < cells } : r
    }

    /// Hyper-connected: the earlier outputs cell i sums (stem = −1, then cells 0…i−2; cell 0: the stem).
    public func hyperSources(cell i: Int) -> [Int] { i == 0 ? [-1] : Array(-1...(i - 2)) }

    /// Slots of architecture logits: one per cell when hyper-connected, else normal and reduce.
    public var slotCount: Int { hyperConnected ? cells : 2 }
    public var edgesPerCell: Int { (0..<nodes).reduce(0) { $0 + 2 + $1 } }

    /// Candidate ops by short name (`sep_conv_3x3`), as genotypes name them.
    public var opNames: [String] { ops.map(Component.shortName) }

    public func validate() throws {
        guard channels >= 2 else { throw EspalierError.config("--channels must be at least 2 (got \(channels)): reduction cells halve the channels on their factorized skip path") }
        guard channels <= 65536 else { throw EspalierError.config("--channels \(channels) is past the 65536 this host builds") }
        guard cells >= 1, cells <= 1024 else { throw EspalierError.config("--cells must be between 1 and 1024 (got \(cells))") }
        guard nodes >= 1, nodes <= 64 else { throw EspalierError.config("--nodes must be between 1 and 64 (got \(nodes))") }
        guard multiplier >= 1, multiplier <= nodes else { throw EspalierError.config("search space: the cell's output concatenates \(multiplier) nodes; it must be between 1 and --nodes \(nodes)") }
        guard stemMultiplier >= 1 else { throw EspalierError.config("search space: the stem multiplier must be at least 1 (got \(stemMultiplier))") }
        guard !ops.isEmpty else { throw EspalierError.config("search space: no candidate ops; give at least one --op (default: the 8 DARTS ops)") }
        guard Set(opNames).count == ops.count else { throw EspalierError.config("search space: two candidate ops share a short name: \(opNames)") }
        guard reductions.allSatisfy({ $0 >= 0 && $0 < cells }) else { throw EspalierError.config("search space: reduction cells \(reductions) outside 0..<\(cells)") }
        guard partialChannels >= 1, channels % partialChannels == 0 else {
            throw EspalierError.config("search space: partial channels K=\(partialChannels) must be ≥ 1 and divide C=\(channels); try K=\((1...8).filter { channels % $0 == 0 }.last ?? 1)")
        }
        if hyperConnected {
            guard partialChannels == 1, !edgeNormalization, mergedOps.isEmpty else {
                throw EspalierError.config("search space: the hyper-connected space (Bonsai-Net) has every op on every edge and every input gated; "
                                           + "it does not combine with partial channels, edge normalisation or merged ops (got K=\(partialChannels), edge normalisation \(edgeNormalization), merged \(mergedOps))")
            }
        }
        if aggregator == .concat {
            guard partialChannels == 1, !edgeNormalization, mergedOps.isEmpty, !hyperConnected else {
                throw EspalierError.config("search space: the concat aggregator (FiGS) joins every running candidate of a node into one 1×1 convolution; "
                                           + "it does not combine with partial channels, edge normalisation, merged ops or the hyper-connected space "
                                           + "(got K=\(partialChannels), edge normalisation \(edgeNormalization), merged \(mergedOps), hyper-connected \(hyperConnected)); "
                                           + "drop those options or use --aggregator sum")
            }
        }
        guard auxiliaryWeight.isFinite, auxiliaryWeight >= 0, auxiliaryCells.allSatisfy({ $0 >= 0 && $0 < cells - 1 }) else {
            throw EspalierError.config("search space: auxiliary heads \(auxiliaryCells) must sit after cells 0..<\(cells - 1) (the last cell has the classifier), with a weight ≥ 0 (got \(auxiliaryWeight))")
        }
    }
}

extension SearchSpaceDescription {
    enum CodingKeys: String, CodingKey {
        case inputChannels, classes, channels, cells, nodes, multiplier, stemMultiplier, ops, reductionCells, partialChannels, edgeNormalization,
             mergedOps, sumOps, scaleParameterFree, hyperConnected, auxiliaryCells, auxiliaryWeight, aggregator, affineOps
    }

    /// Every field optional (the default where missing), so a config.json written before a field
    /// existed still loads (e.g. a run resumed across versions).
    public init(from decoder: Decoder) throws {
        self.init()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func read<T: Decodable>(_ key: CodingKeys, _ value: inout T) throws { if let v = try c.decodeIfPresent(T.self, forKey: key) { value = v } }
        try read(.inputChannels, &inputChannels); try read(.classes, &classes); try read(.channels, &channels); try read(.cells, &cells)
        try read(.nodes, &nodes); try read(.multiplier, &multiplier); try read(.stemMultiplier, &stemMultiplier); try read(.ops, &ops)
        reductionCells = try c.decodeIfPresent([Int].self, forKey: .reductionCells)
        try read(.partialChannels, &partialChannels); try read(.edgeNormalization, &edgeNormalization); try read(.mergedOps, &mergedOps)
        try read(.sumOps, &sumOps); try read(.scaleParameterFree, &scaleParameterFree); try read(.hyperConnected, &hyperConnected)
        try read(.auxiliaryCells, &auxiliaryCells); try read(.auxiliaryWeight, &auxiliaryWeight)
        try read(.aggregator, &aggregator); try read(.affineOps, &affineOps)
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
    /// Concat aggregator: each candidate's block W_t (C_node, C_t, 1, 1) of its node's 1×1
    /// convolution (nil for `none`, removed candidates and the sum aggregator).
    var concatColumns: [Parameter?]
    init(ops: [PluginOp?], merged: [(op: PluginOp, columns: [Int])] = [], scales: [Parameter?]? = nil, concatColumns: [Parameter?]? = nil) {
        self.ops = ops; self.merged = merged
        self.scales = scales ?? Array(repeating: nil, count: ops.count)
        self.concatColumns = concatColumns ?? Array(repeating: nil, count: ops.count)
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
                 state: RunState, skipDropout: Float = 0, worstCase: Bool = false) throws -> Variable {
        try forward(g, earlier: [s0], s1, weights: weights, active: active, edgeWeights: edgeWeights, state: state, skipDropout: skipDropout,
                    worstCase: worstCase)
    }

    /// The cell's first input: pre0(s0) (DARTS), or Σ_j w_j·input_j(earlier_j) over the running
    /// inter-cell inputs (hyper-connected; weight 1 each without a gate), nil if none runs.
    func firstInput(_ g: Graph, earlier: [Variable], inputWeights: Variable?, inputActive: [UInt8]?) throws -> Variable? {
        guard hyper else { return try g.accountant.withOwner("pre0") { try inputs[0]!.apply(g, earlier[0]) } }
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
    /// as many candidates as `active` marks on it, and the costliest ones (`pickCostliest`).
    func forward(_ g: Graph, earlier: [Variable], _ s1: Variable, weights: Variable, active: [UInt8], inputWeights: Variable? = nil,
                 inputActive: [UInt8]? = nil, edgeWeights: Variable? = nil, state: RunState, skipDropout: Float = 0,
                 worstCase: Bool = false) throws -> Variable {
        var active = active
        return try g.accountant.withOwnerID(owner) {
            let first = try firstInput(g, earlier: earlier, inputWeights: inputWeights, inputActive: inputActive)
            let second = try g.accountant.withOwner("pre1") { try pre1.apply(g, s1) }
            // A nil state (every inter-cell input pruned): the edges from it are skipped.
            var states: [Variable?] = [first, second]
            lastInputShape = second.shape
            if hyper { lastEarlierShapes = earlier.map(\.shape) }
            let k = edges.first?.ops.count ?? 0
            let plain = partial == 1 && edgeWeights == nil && edges.allSatisfy { $0.merged.isEmpty } && skipDropout == 0
            var e = 0
            for n in 0..<nodes {
                if worstCase {
                    for (j, h) in states.enumerated() { if let h { try pickCostliest(&active, edge: e + j, input: h) } }
                }
                if !nodeNorms.isEmpty {
                    let incoming = states.count
                    states.append(try concatNode(g, n, states: states, firstEdge: e, weights: weights, active: active, state: state, skipDropout: skipDropout))
                    e += incoming
                    continue
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
                        guard let h else { e += 1; continue }
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
                    guard let h else { e += 1; continue }
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
            return try g.concatChannels(states.suffix(multiplier).map { $0! })
        }
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
                var y = try edge.output(g, o, h, state: state)
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

    /// Bytes each candidate keeps on an edge's input (ops' activations + 3× parameters), measured
    /// once per candidate and shape in a dry run of its own.
    private var candidateBytes: [String: Double] = [:]

    /// A prediction's worst case for a sampled gate on edge e: the gate's stand-in draw marks how
    /// many candidates run (k); the k running candidates that keep the most bytes on `input` are
    /// marked active instead, so the prediction bounds whichever k a real step draws.
    private func pickCostliest(_ active: inout [UInt8], edge e: Int, input h: Variable) throws {
        let edge = edges[e], k = edge.ops.count
        let drawn = (0..<k).reduce(0) { $0 + (active[e * k + $1] != 0 ? 1 : 0) }
        var shape = h.shape
        shape[1] /= partial
        var running: [(o: Int, bytes: Double)] = []
        for (o, op) in edge.ops.enumerated() {
            guard let op, edge.states[o] == .active else { continue }
            let key = "\(e)|\(o)|\(shape)"
            if candidateBytes[key] == nil { candidateBytes[key] = try measureCost(shape, parameters: op.parameters) { g, x in try op(g, x) }.bytes }
            running.append((o, candidateBytes[key]!))
        }
        let kept = Set(running.sorted { $0.bytes != $1.bytes ? $0.bytes > $1.bytes : $0.o < $1.o }.prefix(drawn).map(\.o))
        for o in 0..<k { active[e * k + o] = kept.contains(o) ? 1 : 0 }
    }

    /// A zero node of the cell's output size (states[1], the previous cell's, always exists).
    private func zeroNode(_ g: Graph, _ states: [Variable?]) throws -> Variable {
        let ref = states[states.count - 1]!
        let hw = reduction && states.count == 2 ? [(ref.shape[2] + 1) / 2, (ref.shape[3] + 1) / 2] : [ref.shape[2], ref.shape[3]]
        return try g.zeros([ref.shape[0], states[1]!.shape[1], hw[0], hw[1]])
    }
}

/// Conforming modules can be a cell's input preprocessing.
protocol CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable }
extension ReLUConvBN: CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable { try self(g, x) } }
extension FactorizedReduce: CellInput { func apply(_ g: Graph, _ x: Variable) throws -> Variable { try self(g, x) } }

/// The supernet: weights (stem, cells, classifier) and architecture logits (α per cell type).
/// The supernet: weights (stem, cells, classifier, auxiliary heads) and architecture logits (α
/// per slot: per cell type, or per cell when hyper-connected; plus the inter-cell inputs' logits).
public final class Supernet {
    public let space: SearchSpaceDescription
    let stemConv: Conv2d, stemBN: BatchNorm2d
    let cells: [SearchCell]
    let classifier: Linear
    /// Auxiliary heads: (cell, linear) after each of space.auxiliaryCells.
    let auxHeads: [(cell: Int, head: Linear)]
    /// α per slot, (edges, ops): [normal, reduce], or one per cell when hyper-connected.
    public let alphas: [Parameter]
    /// Hyper-connected: per cell, the logits (inputs, 1) of its inter-cell inputs; empty otherwise.
    public let inputAlphas: [Parameter]
    /// PC-DARTS edge normalisation: β (edges) per cell type; nil without it.
    public let betaNormal: Parameter?, betaReduce: Parameter?
    /// One gate per slot (ops), and per cell for its inter-cell inputs (hyper-connected, with α).
    public let gates: [PluginGate]
    let inputGates: [PluginGate]
    /// P-DARTS: dropout on the outputs of `skip_connect` candidates in training (0 = off).
    public var skipDropout: Float = 0
    /// The gates' mixing weights of the last recorded forward (regularizers on gate weights).
    public private(set) var lastGateWeights: (normal: Variable, reduce: Variable)? = nil
    /// Per slot, and per cell's inter-cell inputs (hyper-connected), of the last recorded forward.
    public private(set) var lastSlotWeights: [Variable] = []
    public private(set) var lastInputWeights: [Variable] = []
    /// The auxiliary heads' logits of the last training forward.
    public private(set) var lastAuxLogits: [Variable] = []

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
        // Hyper-connected: every output so far (stem, cells) with its channels and reductions.
        var outputs: [(channels: Int, level: Int)] = [(cStem, 0)]
        var level = 0
        var aux: [(Int, Linear)] = []
        for i in 0..<space.cells {
            let reduction = space.reductions.contains(i)
            if reduction { c *= 2 }
            let earlier: [(channels: Int, ratio: Int)]? = space.hyperConnected
                ? space.hyperSources(cell: i).map { j in (outputs[j + 1].channels, 1 << (level - outputs[j + 1].level)) } : nil
            cells.append(try SearchCell(f, index: i, space: space, registry: registry, context: context, opSettings: opSettings,
                                        cPrevPrev: cPrevPrev, cPrev: cPrev, c: c, reduction: reduction, reductionPrev: reductionPrev, earlier: earlier))
            if reduction { level += 1 }
            reductionPrev = reduction
            cPrevPrev = cPrev
            cPrev = space.multiplier * c
            outputs.append((cPrev, level))
            if space.auxiliaryCells.contains(i) {
                aux.append((i, try Linear(f, name: "aux\(i)", inFeatures: cPrev, outFeatures: space.classes)))
            }
        }
        self.cells = cells
        auxHeads = aux
        classifier = try Linear(f, name: "classifier", inFeatures: cPrev, outFeatures: space.classes)
        let e = space.edgesPerCell, k = space.ops.count
        if space.hyperConnected {
            alphas = try f.scope("arch") { try (0..<space.cells).map { try f.make("cell\($0)", [e, k], .normal(std: 1e-3)) } }
            inputAlphas = try f.scope("arch") {
                try (0..<space.cells).map { try f.make("cell\($0)_inputs", [space.hyperSources(cell: $0).count, 1], .normal(std: 1e-3)) }
            }
        } else {
            alphas = try f.scope("arch") { [try f.make("normal", [e, k], .normal(std: 1e-3)), try f.make("reduce", [e, k], .normal(std: 1e-3))] }
            inputAlphas = []
        }
        if space.edgeNormalization {
            (betaNormal, betaReduce) = try f.scope("arch") {
                (try f.make("beta_normal", [e], .normal(std: 1e-3)), try f.make("beta_reduce", [e], .normal(std: 1e-3)))
            }
        } else {
            (betaNormal, betaReduce) = (nil, nil)
        }
        let gate = try registry.require(gateID, kind: .gate)
        let names = space.hyperConnected ? (0..<space.cells).map { "cell\($0)" } : ["normal", "reduce"]
        gates = try names.map { try PluginGate(gate, context: context, granularity: .ops, rows: e, cols: k, settings: gateSettings, ownerPath: "arch/\($0)/gate") }
        // Summed spaces (no α) need no input gates: every running input has weight 1.
        inputGates = space.sumOps ? [] : try inputAlphas.enumerated().map { i, a in
            do {
                return try PluginGate(gate, context: context, granularity: .inputs, rows: a.value.shape[0], cols: 1, settings: gateSettings,
                                      ownerPath: "arch/cell\(i)/inputs/gate")
            } catch {
                throw EspalierError.config("the hyper-connected space gates each cell's inter-cell inputs, but \(gateID) cannot (\(error)); use espalier.gate.sawwave/1")
            }
        }
    }

    public var hyperConnected: Bool { space.hyperConnected }
    /// The slot whose α cell `i` uses.
    public func slot(ofCell i: Int) -> Int { space.hyperConnected ? i : (cells[i].reduction ? 1 : 0) }
    func slot(of cell: SearchCell) -> Int { space.hyperConnected ? cell.index : (cell.reduction ? 1 : 0) }
    /// The slot that stands for a cell type (hyper-connected: the first cell of the type).
    public func slot(reduction: Bool) -> Int {
        guard space.hyperConnected else { return reduction ? 1 : 0 }
        return cells.first { $0.reduction == reduction }?.index ?? 0
    }
    public var slotCount: Int { alphas.count }
    public var slotNames: [String] { space.hyperConnected ? (0..<space.cells).map { "cell\($0)" } : ["normal", "reduce"] }
    public var alphaNormal: Parameter { alphas[slot(reduction: false)] }
    public var alphaReduce: Parameter { alphas[slot(reduction: true)] }
    public var gateNormal: PluginGate { gates[slot(reduction: false)] }
    public var gateReduce: PluginGate { gates[slot(reduction: true)] }
    /// Every instance of the run's gate: one per slot (per cell type, or per cell when
    /// hyper-connected), then each cell's inter-cell input gate. `set_value("gate.NAME")` reaches
    /// all of them. Not the channel gates (`--channel-gate`, HostContext's gates by role): another
    /// component with its own settings, made lazily per logits length, so not one namespace with these.
    public var archGates: [PluginGate] { gates + inputGates }

    /// Network weights (everything but α), in a stable order.
    public var weights: [Parameter] {
        stemConv.parameters + stemBN.parameters + cells.flatMap(\.parameters) + auxHeads.flatMap(\.head.parameters) + classifier.parameters
    }
    /// The trained architecture parameters: none when the space sums its ops (`sumOps`).
    public var archParameters: [Parameter] { space.sumOps ? [] : alphas + [betaNormal, betaReduce].compactMap { $0 } + inputAlphas }
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
    func gateInput(_ g: Graph, reduction: Bool) throws -> Variable { try gateInput(g, slot: slot(reduction: reduction)) }

    func gateInput(_ g: Graph, slot s: Int) throws -> Variable {
        let alpha = g.param(alphas[s])
        guard let cell = cells.first(where: { slot(of: $0) == s }) else { return alpha }
        let keep = cell.edges.flatMap { e in e.states.map { $0 == .active } }
        return keep.allSatisfy({ $0 }) ? alpha : try g.maskedFill(alpha, keep: keep, value: -.infinity)
    }

    /// The input gate's input for cell i: its inputs' logits, masked and removed ones −∞.
    func inputGateInput(_ g: Graph, cell i: Int) throws -> Variable {
        let a = g.param(inputAlphas[i])
        let keep = cells[i].inputStates.map { $0 == .active }
        return keep.allSatisfy({ $0 }) ? a : try g.maskedFill(a, keep: keep, value: -.infinity)
    }

    /// logits (N, classes) for images (N, Cin, H, W).
    public func logits(_ g: Graph, _ x: Variable, state: RunState = RunState()) throws -> Variable {
        let slotWeights: [(Variable, [UInt8])] = try slotNames.enumerated().map { s, name in
            try g.accountant.withOwner("arch/\(name)") { space.sumOps ? try unitWeights(g) : try gates[s](g, try gateInput(g, slot: s), state: state) }
        }
        let inputWeights: [(Variable, [UInt8])] = try inputGates.enumerated().map { i, gate in
            try g.accountant.withOwner("arch/cell\(i)/inputs") { try gate(g, try inputGateInput(g, cell: i), state: state) }
        }
        let recording = g.isRecording && !space.sumOps
        lastSlotWeights = recording ? slotWeights.map(\.0) : []
        lastInputWeights = recording ? inputWeights.map(\.0) : []
        lastGateWeights = recording ? (slotWeights[slot(reduction: false)].0, slotWeights[slot(reduction: true)].0) : nil
        let (bn, br) = try g.accountant.withOwner("arch/edges") { (try edgeWeights(g, reduction: false), try edgeWeights(g, reduction: true)) }
        let stem = try g.accountant.withOwner("stem") { try stemBN(g, try stemConv(g, x)) }
        var s0 = stem, s1 = stem
        var outputs = [stem]
        var aux: [Variable] = []
        for (i, cell) in cells.enumerated() {
            let (w, a) = slotWeights[slot(of: cell)]
            // A prediction with a sampled gate: the costliest candidates stand for the drawn ones.
            let worstCase = !g.computing && g.accountant.isDryRun && !space.sumOps && gates[slot(of: cell)].isSampled
            let out: Variable
            if space.hyperConnected {
                let iw = inputWeights.isEmpty ? nil : inputWeights[i]
                out = try cell.forward(g, earlier: space.hyperSources(cell: i).map { outputs[$0 + 1] }, outputs[i], weights: w, active: a,
                                       inputWeights: iw?.0, inputActive: iw?.1, state: state, skipDropout: skipDropout, worstCase: worstCase)
                outputs.append(out)
            } else {
                out = try cell.forward(g, s0, s1, weights: w, active: a, edgeWeights: cell.reduction ? br : bn, state: state, skipDropout: skipDropout,
                                       worstCase: worstCase)
            }
            s0 = s1
            s1 = out
            if g.training, let head = auxHeads.first(where: { $0.cell == i })?.head {
                aux.append(try g.accountant.withOwner("aux\(i)") { try head(g, try g.globalAvgPool(out)) })
            }
        }
        lastAuxLogits = aux
        return try g.accountant.withOwner("classifier") { try classifier(g, try g.globalAvgPool(s1)) }
    }

    // MARK: Op states (for strategies)

    public func opState(reduction: Bool, edge: Int, op: Int) -> OpState {
        cells.first { $0.reduction == reduction }?.edges[edge].states[op] ?? .active
    }

    public func opState(slot s: Int, edge: Int, op: Int) -> OpState {
        cells.first { slot(of: $0) == s }?.edges[edge].states[op] ?? .active
    }

    /// Sets a candidate's state in every cell of the type; removing frees its parameters.
    public func setOpState(reduction: Bool, edge: Int, op: Int, _ state: OpState) throws {
        try setOpState(in: cells.filter { $0.reduction == reduction }, edge: edge, op: op, state)
    }

    /// Sets a candidate's state in the cells of a slot (hyper-connected: one cell).
    public func setOpState(slot s: Int, edge: Int, op: Int, _ state: OpState) throws {
        guard s >= 0, s < slotCount else { throw EspalierError.invalidArgument("no slot \(s) (slots: \(slotNames.joined(separator: ", ")))") }
        try setOpState(in: cells.filter { slot(of: $0) == s }, edge: edge, op: op, state)
    }

    private func setOpState(in chosen: [SearchCell], edge: Int, op: Int, _ state: OpState) throws {
        guard edge >= 0, edge < space.edgesPerCell, op >= 0, op < space.ops.count else {
            throw EspalierError.invalidArgument("no candidate \(op) on edge \(edge) (edges \(space.edgesPerCell), ops \(space.ops.count))")
        }
        for cell in chosen {
            if cell.edges[edge].states[op] == .removed && state != .removed {
                throw EspalierError.invalidArgument("candidate \(space.opNames[op]) on edge \(edge) was removed for good")
            }
            cell.edges[edge].states[op] = state
            if state == .removed { cell.edges[edge].ops[op] = nil; cell.edges[edge].scales[op] = nil; cell.edges[edge].concatColumns[op] = nil }
        }
    }

    /// Hyper-connected: the state of cell `cell`'s inter-cell input `input`.
    public func inputState(cell: Int, input: Int) throws -> OpState {
        try checkInput(cell: cell, input: input)
        return cells[cell].inputStates[input]
    }

    /// Sets an inter-cell input's state; removing frees its preprocessing.
    public func setInputState(cell: Int, input: Int, _ state: OpState) throws {
        try checkInput(cell: cell, input: input)
        let c = cells[cell]
        if c.inputStates[input] == .removed && state != .removed {
            throw EspalierError.invalidArgument("inter-cell input \(input) of cell \(cell) was removed for good")
        }
        c.inputStates[input] = state
        if state == .removed { c.inputs[input] = nil }
    }

    private func checkInput(cell: Int, input: Int) throws {
        guard space.hyperConnected else { throw EspalierError.invalidArgument("inter-cell inputs exist only in the hyper-connected space (space.hyper_connected)") }
        guard cell >= 0, cell < cells.count, input >= 0, input < cells[cell].inputs.count else {
            throw EspalierError.invalidArgument("no inter-cell input \(input) of cell \(cell) (\(cells.count) cells; cell i has max(i, 1) inputs)")
        }
    }

    /// Architecture logits of a cell type as rows of floats.
    public func logits(reduction: Bool) -> [[Float]] { logits(slot: slot(reduction: reduction)) }

    public func logits(slot s: Int) -> [[Float]] {
        let a = alphas[s].value, k = space.ops.count
        return (0..<space.edgesPerCell).map { e in (0..<k).map { a.isVirtual ? 0 : a[e * k + $0] } }
    }

    /// Mixing weights of a cell type as rows of floats (gate applied in evaluation mode).
    public func mixingWeights(reduction: Bool, accountant: MemoryAccountant) throws -> [[Float]] {
        try mixingWeights(slot: slot(reduction: reduction), accountant: accountant)
    }

    public func mixingWeights(slot s: Int, accountant: MemoryAccountant) throws -> [[Float]] {
        if space.sumOps {
            // Plain sum: 1 for every candidate that runs, 0 for `none`, masked and removed ones.
            let names = space.opNames
            return (0..<space.edgesPerCell).map { e in
                names.indices.map { o in names[o] != "none" && opState(slot: s, edge: e, op: o) == .active ? 1 : 0 }
            }
        }
        let g = Graph(accountant: accountant)
        g.training = false
        let w = try g.noGrad { try gates[s](g, try gateInput(g, slot: s)).weights }
        let k = space.ops.count
        return (0..<space.edgesPerCell).map { e in (0..<k).map { w.value.isVirtual ? 0 : w.value[e * k + $0] } }
    }

    /// Hyper-connected: cell i's inter-cell input weights (gate in evaluation mode; 1/0 by state without α).
    public func inputWeights(cell i: Int, accountant: MemoryAccountant) throws -> [Float] {
        let states = cells[i].inputStates
        guard !space.sumOps, i < inputGates.count else { return states.map { $0 == .active ? 1 : 0 } }
        let g = Graph(accountant: accountant)
        g.training = false
        let w = try g.noGrad { try inputGates[i](g, try inputGateInput(g, cell: i)).weights }
        return states.indices.map { w.value.isVirtual ? 0 : w.value[$0] }
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
    /// Hyper-connected: the cell type's first cell stands for the type (the pruned network
    /// itself is `PrunedArchitecture`).
    public func genotype(accountant: MemoryAccountant) throws -> Genotype {
        let names = space.opNames
        func ranked(_ reduction: Bool) throws -> [[Float]] {
            let w = gates[slot(reduction: reduction)].isSampled
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
