// The discrete network of a genotype, trained from scratch after a search (DARTS's
// NetworkCIFAR): a stem, stacked cells whose nodes each sum their chosen ops (two in DARTS; any
// number, possibly none, with the genotype's node sizes) (plugin ops, affine
// batch norm), drop-path on every op but identities, an optional auxiliary head after the second
// reduction, global pooling and a classifier. Saved as safetensors with its description.
// A genotype with `per_cell` (a channel-mask export, FiGS's) gives every cell its own edges, op
// settings and the learned widths of its ops' channel masks (`channel_widths`, handed to each op
// through `channel_width` as it is created); the network then has exactly
// those cells, reduces where they say, and must be built with the channel count C they were
// searched at (checked per cell).
// With the concat aggregator (`node_aggregator` "concat", FiGS §3.3) a node is
// BN(conv1×1(concat of its ops' outputs)) back to C channels, and each op may have its own output
// width (`out_channels` of a `per_cell` entry, e.g. FiGS's ⌊Σπ_out⌋).
// Each op is built with the settings the search recorded for its id (the genotype's `settings`),
// a `per_cell` entry's per-edge `op_settings` over them.
// Shapes: (N, Cin, H, W) → logits (N, classes).

import EspalierCore
import EspalierHost
import Foundation

/// What the network is made of (saved in model.safetensors' metadata).
public struct NetworkDescription: Codable, Equatable, Sendable {
    public var genotype: Genotype
    public var inputChannels = 1
    public var classes = 10
    public var channels = 16
    public var cells = 8
    public var stemMultiplier = 3
    public var auxiliary = false
    public var auxiliaryWeight: Float = 0.4
    /// Drop-path probability at the last epoch (it grows linearly from 0).
    public var dropPath: Float = 0
    public var imageSize = 28

    public init(genotype: Genotype) { self.genotype = genotype }
    /// Reduction cells: where `per_cell` says, else at 1/3 and 2/3 of the depth.
    public var reductions: [Int] {
        if let per = genotype.perCell { return per.indices.filter { per[$0].reduction } }
        return [cells / 3, 2 * cells / 3]
    }

    /// The structure of cell `index`: its `per_cell` entry, or the genotype's cell of its type
    /// (default op settings, the current C).
    func gene(_ index: Int, channels c: Int) -> Genotype.CellGene {
        if let per = genotype.perCell { return per[index] }
        let type: Genotype.CellType = reductions.contains(index) ? .reduce : .normal
        let edges = genotype.edges(type)
        return Genotype.CellGene(reduction: type == .reduce, channels: c, edges: edges, nodeSizes: genotype.nodeSizes(type),
                                 concat: genotype.concat(type), opSettings: Array(repeating: [:], count: edges.count))
    }

    /// Why the network's output cannot depend on its input, or nil: a cell whose output nodes all
    /// kept no op outputs zeros, so if the last cell, or two cells in a row, are such cells, the
    /// classifier sees a constant (e.g. a FiGS export at too large a λ, or GSparsity at too large a μ).
    public var deadEnd: String? {
        let empty = (0..<cells).filter { i in
            let g = gene(i, channels: channels)
            return g.concat.allSatisfy { $0 >= 2 && $0 - 2 < g.nodeSizes.count && g.nodeSizes[$0 - 2] == 0 }
        }
        if empty.contains(cells - 1) { return "cell \(cells - 1), the last, kept no op (empty cells: \(empty))" }
        if let i = empty.first(where: { empty.contains($0 + 1) }) { return "cells \(i) and \(i + 1) both kept no op (empty cells: \(empty))" }
        return nil
    }

    /// Problems of a `per_cell` genotype with this description (cell count, widths).
    func checkPerCell() throws {
        guard let per = genotype.perCell else { return }
        guard per.count == cells else {
            throw EspalierError.config("the genotype lists \(per.count) cells in \"per_cell\" (each searched on its own); build it with \(per.count) cells, not \(cells)")
        }
        var c = channels
        for (i, cell) in per.enumerated() {
            if cell.reduction { c *= 2 }
            guard cell.channels == c else {
                throw EspalierError.config("cell \(i) of the genotype was searched with C=\(cell.channels) but this network gives it C=\(c); "
                                           + "build it with the search's initial channels (--channels \(channels * cell.channels / c))")
            }
        }
    }
}

final class DiscreteCell {
    let reduction: Bool
    let pre0: Module & CellInput, pre1: Module & CellInput
    let index: Int
    let ops: [PluginOp]
    let identity: [Bool]
    let inputs: [Int]
    /// The node each op feeds, and the number of nodes.
    let nodeOf: [Int]
    let nodes: Int
    let concat: [Int]
    let owner: Int32
    /// Concat aggregator: per node, the 1×1 conv (Σ widths → C) and its batch norm (nil for an
    /// empty node); empty for the sum.
    let aggregators: [(conv: Conv2d, bn: BatchNorm2d)?]

    init(_ f: ParameterFactory, index: Int, genotype: Genotype, gene: Genotype.CellGene, registry: PluginRegistry, context: HostContext,
         cPrevPrev: Int, cPrev: Int, c: Int, reduction: Bool, reductionPrev: Bool) throws {
        self.index = index
        self.reduction = reduction
        let edges = gene.edges
        concat = gene.concat
        inputs = edges.map(\.input)
        let nodeOf = gene.nodeIndices
        self.nodeOf = nodeOf
        nodes = gene.nodeSizes.count
        let acc = f.accountant
        let name = "cell\(index)"
        owner = acc.owner(acc.currentOwnerPath.isEmpty ? name : acc.currentOwnerPath + "/" + name)
        let widths = gene.outChannels ?? Array(repeating: c, count: edges.count)
        let concatNodes = genotype.nodeAggregator == .concat
        (pre0, pre1, ops, identity, aggregators) = try f.scope(name) {
            let p0: Module & CellInput = reductionPrev
                ? try FactorizedReduce(f, name: "pre0", cIn: cPrevPrev, cOut: c, affine: true)
                : try ReLUConvBN(f, name: "pre0", cIn: cPrevPrev, cOut: c, affine: true)
            let p1 = try ReLUConvBN(f, name: "pre1", cIn: cPrev, cOut: c, affine: true)
            var ops: [PluginOp] = [], identity: [Bool] = []
            for (k, e) in edges.enumerated() {
                let id = genotype.opIDs?[e.op] ?? "espalier.op.\(e.op)/1"
                let comp: Component
                do { comp = try registry.require(id, kind: .op) } catch {
                    throw EspalierError.config("the genotype's op '\(e.op)' needs plugin component \(id): \(error)")
                }
                let stride = reduction && e.input < 2 ? 2 : 1
                ops.append(try PluginOp(comp, context: context, config: OpConfig(inChannels: c, outChannels: widths[k], stride: stride, affine: true),
                                        settings: genotype.opSettings(id: id, edge: gene.opSettings[k]),
                                        ownerPath: acc.currentOwnerPath + "/node\(nodeOf[k])/\(e.op)\(k - (nodeOf.firstIndex(of: nodeOf[k]) ?? k))",
                                        exportedWidths: gene.channelWidths.flatMap { $0[k].isEmpty ? nil : $0[k] }))
                identity.append(e.op == "skip_connect" && stride == 1)
            }
            let aggregators: [(conv: Conv2d, bn: BatchNorm2d)?] = try concatNodes ? (0..<gene.nodeSizes.count).map { i in
                let width = ops.indices.filter { nodeOf[$0] == i }.reduce(0) { $0 + widths[$1] }
                guard width > 0 else { return nil }
                return (try Conv2d(f, name: "node\(i)/concat/conv", cIn: width, cOut: c, kernel: 1), try BatchNorm2d(f, name: "node\(i)/concat/bn", channels: c))
            } : []
            return (p0, p1, ops, identity, aggregators)
        }
    }

    var parameters: [Parameter] {
        pre0.parameters + pre1.parameters + ops.flatMap(\.parameters) + aggregators.compactMap { $0 }.flatMap { $0.conv.parameters + $0.bn.parameters }
    }
    var buffers: [Tensor] { pre0.buffers + pre1.buffers + ops.flatMap(\.buffers) + aggregators.compactMap { $0 }.flatMap(\.bn.buffers) }

    /// What this cell recomputes inside itself (ops, or each node's edges; set by the network).
    var recompute = RecomputePlan.none
    var isRecomputable: Bool { ops.allSatisfy(\.isRecomputable) }

    func forward(_ g: Graph, _ s0: Variable, _ s1: Variable, dropPath p: Float) throws -> Variable {
        try g.accountant.withOwnerID(owner) {
            var states = [try pre0.apply(g, s0), try pre1.apply(g, s1)]
            for i in 0..<nodes {
                let incoming = ops.indices.filter { nodeOf[$0] == i }
                let segment = "cell\(index)/node\(i)", now = states
                let node = { try self.node(g, i, incoming, states: now, dropPath: p) }
                let whole = recompute.recomputes(segment, at: .edges) && incoming.allSatisfy { ops[$0].isRecomputable }
                states.append(whole ? try g.recomputed(segment, inputs: incoming.map { now[inputs[$0]] }, node) : try node())
            }
            return try g.concatChannels(concat.map { states[$0] })
        }
    }

    /// Node i from the ops `incoming` on `states`: their sum, or BN(conv1×1(concat)) (concat aggregator).
    private func node(_ g: Graph, _ i: Int, _ incoming: [Int], states: [Variable], dropPath p: Float) throws -> Variable {
        var hs: [Variable] = []
        for k in incoming {
            let x = states[inputs[k]], segment = "cell\(index)/node\(i)/op\(k)"
            var h = recompute.recomputes(segment, at: .ops) && ops[k].isRecomputable
                ? try g.recomputed(segment, inputs: [x]) { try self.ops[k](g, x) } : try ops[k](g, x)
            if g.training && p > 0 && !identity[k] { h = try g.dropPath(h, p: p) }
            hs.append(h)
        }
        // A node no op survived on (GSparsity) is zero, at the cell's output size.
        if hs.isEmpty { return try g.zeros(like: states[0], stride: reduction ? 2 : 1) }
        if let agg = aggregators.isEmpty ? nil : aggregators[i] {
            // Concat aggregator: BN(conv1×1(concat of the ops' outputs)).
            return try g.accountant.withOwner("node\(i)/concat") { try agg.bn(g, try agg.conv(g, hs.count == 1 ? hs[0] : try g.concatChannels(hs))) }
        }
        return hs.count == 2 ? try g.add(hs[0], hs[1]) : hs.count == 1 ? hs[0] : try g.sum(hs)
    }
}

/// ReLU → avg-pool 5 → 1×1 conv 128 → BN → ReLU → 2×2 conv 768 → BN → ReLU → linear (DARTS's auxiliary head).
final class AuxiliaryHead {
    let conv1: Conv2d, bn1: BatchNorm2d, conv2: Conv2d, bn2: BatchNorm2d, fc: Linear
    let poolStride: Int
    init(_ f: ParameterFactory, cIn: Int, spatial: Int, classes: Int) throws {
        guard spatial > 5 else { throw EspalierError.config("the auxiliary head needs feature maps larger than 5×5 after the second reduction; got \(spatial)×\(spatial)") }
        poolStride = spatial - 5
        (conv1, bn1, conv2, bn2, fc) = try f.scope("aux") {
            (try Conv2d(f, name: "conv1", cIn: cIn, cOut: 128, kernel: 1), try BatchNorm2d(f, name: "bn1", channels: 128),
             try Conv2d(f, name: "conv2", cIn: 128, cOut: 768, kernel: 2), try BatchNorm2d(f, name: "bn2", channels: 768),
             try Linear(f, name: "fc", inFeatures: 768, outFeatures: classes))
        }
    }
    var parameters: [Parameter] { conv1.parameters + bn1.parameters + conv2.parameters + bn2.parameters + fc.parameters }
    var buffers: [Tensor] { bn1.buffers + bn2.buffers }
    func callAsFunction(_ g: Graph, _ x: Variable) throws -> Variable {
        var h = try g.avgPool2d(try g.relu(x), kernel: 5, stride: poolStride, padding: 0)
        h = try g.relu(try bn1(g, try conv1(g, h)))
        h = try g.relu(try bn2(g, try conv2(g, h)))
        return try fc(g, h)
    }
}

public final class DiscreteNetwork: AuxiliaryClassifier, SavedModel {
    public let description: NetworkDescription
    let stemConv: Conv2d, stemBN: BatchNorm2d
    let cells: [DiscreteCell]
    let aux: AuxiliaryHead?
    let auxAfter: Int
    let classifier: Linear
    public private(set) var dropPathNow: Float = 0
    /// What the forward recomputes in backward instead of keeping (`train --recompute`).
    public var recompute = RecomputePlan.none
    /// The owner path the network was built under; saved names are relative to it.
    let ownerPrefix: String
    /// Where training is, as its ops' plugin calls see it (the context's `runState`): the epoch
    /// from `epochStarted`, one step per training forward, `totalSteps` when `stepsPerEpoch` is set.
    public private(set) var runState = RunState()
    /// Training batches per epoch (for the run state's total steps; nil = unknown, 0).
    public var stepsPerEpoch: Int? = nil

    public init(_ d: NetworkDescription, registry: PluginRegistry, context: HostContext, seed: UInt64) throws {
        try d.genotype.validate()
        try d.checkPerCell()
        description = d
        let acc = context.accountant
        ownerPrefix = acc.currentOwnerPath
        let f = ParameterFactory(accountant: acc, seed: seed)
        context.factory = ParameterFactory(accountant: acc, seed: seed &+ 7919)
        let cStem = d.stemMultiplier * d.channels
        (stemConv, stemBN) = try f.scope("stem") {
            (try Conv2d(f, name: "conv", cIn: d.inputChannels, cOut: cStem, kernel: 3, padding: 1), try BatchNorm2d(f, name: "bn", channels: cStem))
        }
        var cPrevPrev = cStem, cPrev = cStem, c = d.channels, reductionPrev = false
        var cells: [DiscreteCell] = []
        var auxHead: AuxiliaryHead? = nil
        var spatial = d.imageSize
        // After the second reduction (a `per_cell` network may have fewer: after the last one).
        auxAfter = d.reductions.dropFirst().first ?? d.reductions.first ?? max(d.cells - 1, 0)
        for i in 0..<d.cells {
            let reduction = d.reductions.contains(i)
            if reduction { c *= 2; spatial = (spatial + 1) / 2 }
            let gene = d.gene(i, channels: c)
            cells.append(try DiscreteCell(f, index: i, genotype: d.genotype, gene: gene, registry: registry, context: context,
                                          cPrevPrev: cPrevPrev, cPrev: cPrev, c: c, reduction: reduction, reductionPrev: reductionPrev))
            reductionPrev = reduction
            cPrevPrev = cPrev
            cPrev = gene.concat.count * c
            if i == auxAfter && d.auxiliary { auxHead = try AuxiliaryHead(f, cIn: cPrev, spatial: spatial, classes: d.classes) }
        }
        self.cells = cells
        aux = auxHead
        classifier = try Linear(f, name: "classifier", inFeatures: cPrev, outFeatures: d.classes)
    }

    /// Makes `context` answer plugin calls with this network's training state (`espalier train`;
    /// a child trained inside a search keeps the search's).
    public func providesRunState(to context: HostContext) {
        context.runState = { [weak self] in self?.runState ?? RunState() }
    }

    public var parameters: [Parameter] {
        stemConv.parameters + stemBN.parameters + cells.flatMap(\.parameters) + (aux?.parameters ?? []) + classifier.parameters
    }
    public var buffers: [Tensor] { stemBN.buffers + cells.flatMap(\.buffers) + (aux?.buffers ?? []) }
    public var auxiliaryWeight: Float { description.auxiliaryWeight }
    /// Every op of every cell, in order (each with the settings it was built with).
    public var ops: [PluginOp] { cells.flatMap(\.ops) }

    public func epochStarted(_ epoch: Int, of total: Int) {
        dropPathNow = description.dropPath * Float(epoch) / Float(max(total, 1))
        runState.epoch = epoch
        runState.totalEpochs = total
        runState.totalSteps = (stepsPerEpoch ?? 0) * total
    }

    public func logits(_ g: Graph, _ x: Variable) throws -> Variable { try logitsWithAuxiliary(g, x).logits }

    public func logitsWithAuxiliary(_ g: Graph, _ x: Variable) throws -> (logits: Variable, auxiliary: Variable?) {
        defer { if g.training && g.computing { runState.step += 1 } }
        let stem = try g.accountant.withOwner("stem") { try stemBN(g, try stemConv(g, x)) }
        var s0 = stem, s1 = stem
        var auxLogits: Variable? = nil
        for (i, cell) in cells.enumerated() {
            let (c0, c1, p) = (s0, s1, dropPathNow)
            let whole = recompute.recomputes("cell\(i)", at: .cells) && cell.isRecomputable
            cell.recompute = whole ? .none : recompute
            let out = whole ? try g.recomputed("cell\(i)", inputs: [c0, c1]) { try cell.forward(g, c0, c1, dropPath: p) }
                : try cell.forward(g, c0, c1, dropPath: p)
            s0 = s1; s1 = out
            if i == auxAfter, let aux, g.training { auxLogits = try g.accountant.withOwner("aux") { try aux(g, s1) } }
        }
        let logits = try g.accountant.withOwner("classifier") { try classifier(g, try g.globalAvgPool(s1)) }
        return (logits, auxLogits)
    }

    /// Forward FLOPs of one image through the network of `d` in evaluation mode (the graph's count,
    /// on a dry-run copy: nothing is computed or allocated for real).
    public static func forwardFlops(_ d: NetworkDescription, registry: PluginRegistry) throws -> Int {
        try ClassifierTrainer.forwardFlops(imageShape: [d.inputChannels, d.imageSize, d.imageSize]) { dry in
            try DiscreteNetwork(d, registry: registry, context: HostContext(accountant: dry, seed: 0), seed: 0)
        }
    }

    // MARK: Saving and loading

    /// model.safetensors: every weight and batch-norm statistic, and the description as metadata.
    public func save(path: String, extraMetadata: [String: String] = [:]) throws {
        try writeModel(path: path, key: "espalier.network", description: description, extraMetadata: extraMetadata)
    }

    /// Rebuilds the network saved at `path` and loads its tensors.
    public static func load(path: String, registry: PluginRegistry, context: HostContext) throws -> (DiscreteNetwork, [String: String]) {
        let file = try SafeTensorsFile.read(path: path)
        guard let meta = file.metadata["espalier.network"] else {
            throw EspalierError.data(file: path, problem: "not an Espalier model (no espalier.network metadata); was it written by `espalier train`?")
        }
        let d: NetworkDescription
        do { d = try JSONDecoder().decode(NetworkDescription.self, from: Data(meta.utf8)) } catch {
            throw EspalierError.data(file: path, problem: "damaged network description: \(error)")
        }
        let net = try context.accountant.withOwner("model") { try DiscreteNetwork(d, registry: registry, context: context, seed: 0) }
        try net.loadTensors(from: file)
        return (net, file.metadata)
    }
}
