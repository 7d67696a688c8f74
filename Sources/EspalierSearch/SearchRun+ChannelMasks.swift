// Channel masks in the common trainer: cost targets for the expected-cost regularizer and the
// export of the found network. An op gates its own channels when its IR has a channel mask (a
// gate on a parameter scaling a value's channels: OpIR+ChannelMasks.swift); any such op, FiGS's or
// a third party's, gets parameter targets for its masked convolutions, read from the IR. The
// FLOPs and memory targets and the export still know FiGS's ops by their masks' names
// ("mask_mid.logits" (M) and "mask_out.logits" (C)) and their `mid_channels` setting.
//
// Targets. After every backward the host hands each gate-weight regularizer targets
// (ES_TARGET_GATE_WEIGHTS; parts = the logits ν of masks, costs = per-channel unit costs of the
// same shapes, grads = the logits' gradients, which the weight step then applies). The
// regularizer's expected cost of a target is Π_parts Σ_i c_i·σ(ν_i).
//   Parameters, per masked convolution ("channels/OP_PATH/CONV/params", CONV its weight's name),
//   from the IR (`MaskedConvolution.parameterCostParts`); for FiGS's ops:
//   figs_sep_conv   pw1 (C → M, in unmasked):  parts [ν_mid], cost C·k_h·k_w each      → C·Σπ_mid
//                   dw2 (depthwise on M):      parts [ν_mid], cost k_h·k_w each        → k²·Σπ_mid
//                   pw2 (M → C):               parts [ν_mid, ν_out], costs 1, 1        → Σπ_mid·Σπ_out
//   figs_dil_conv   pw (C → C, in unmasked):   parts [ν_out], cost C each              → C·Σπ_out
//   (convolutions whose inputs and outputs are both unmasked have a constant cost and no target).
//   FLOPs and memory, per op ("channels/OP_PATH/{out,mid}/{flops,memory}"), from the accountant:
//   the exported op (no masks, affine) is built in a dry-run accountant on the edge's input shape
//   of the last forward (as the per-candidate costs are), at its full intermediate width M = C and
//   at M = C − 1: F(M) = a + b·M exactly (every layer of the op is linear in M), so b is what one
//   intermediate channel costs and a the rest. The op's expected cost scales with the fraction of
//   its output channels kept, E = (Σπ_out/C)·(a + b·Σπ_mid), given as two targets:
//     out: parts [ν_out], costs a/C        mid: parts [ν_mid, ν_out], costs [b, 1/C]
//   (a dil conv has no M: out only, costs F/C). At π ≡ 1 this is the accountant's figure of the
//   op; with hard masks keeping m intermediate channels it is the figure of the op built with m.
//   FLOPs are the graph's forward FLOPs; bytes are the activations its forward keeps plus
//   parameters, gradients and momentum (3 × 4 bytes per weight), as the per-candidate costs count.
// Export (FiGS §3.2): each masked layer keeps ⌊Σπ⌋ channels, π = σ(ν) (`channelMaskExport`); the
// intermediate width becomes the op's `mid_channels` setting and `masks` false builds the plain op.
// An op with a mask keeping ⌊Σπ⌋ = 0 channels is dropped. With the sum aggregator a cell's op
// outputs are summed at the width C, so the output masks' counts are reported (and decide whether
// the op survives) but the exported ops keep C outputs; with the concat aggregator (FiGS §3.3)
// each exported op keeps ⌊Σπ_out⌋ outputs (`out_channels`) and its node's 1×1 convolution reads
// their concatenation, so the output mask also has a parameter target for its block of that
// convolution ("channels/OP_PATH/concat/params": parts [ν_out], cost C_node each) and the FLOPs
// and memory targets add what one channel of the block costs. `channelMaskGenotype` writes the
// network as a genotype with one `per_cell` entry per cell (FiGS searches every cell on its own).

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

/// One op with channel masks: its owner path and parameters by the op's own names, and where it sits.
struct ChannelMaskedOp {
    let op: PluginOp
    let path: String
    let id: String
    let params: [String: Parameter]
    let cell: SearchCell
    let edge: Int
    let column: Int
}

extension Supernet {
    /// Every op in the supernet whose IR has a channel mask (a gate on a parameter scaling a value's channels).
    func channelMaskedOps() -> [ChannelMaskedOp] {
        var out: [ChannelMaskedOp] = []
        for cell in cells {
            for (e, edge) in cell.edges.enumerated() {
                for case let (o, op?) in edge.ops.enumerated() {
                    guard let ir = try? op.currentIR(), !ir.channelMasks.isEmpty else { continue }
                    out.append(ChannelMaskedOp(op: op, path: op.ownerPath, id: op.component.id, params: Self.maskParameters(op), cell: cell, edge: e, column: o))
                }
            }
        }
        return out
    }

    /// An op's parameters by the op's own names ("mask_mid.logits", "pw1.weight", …).
    static func maskParameters(_ op: PluginOp) -> [String: Parameter] {
        let prefix = op.ownerPath + "/"
        var byName: [String: Parameter] = [:]
        for p in op.parameters where p.name.hasPrefix(prefix) { byName[String(p.name.dropFirst(prefix.count))] = p }
        return byName
    }

    /// The channel count C of cell `index` (doubled at every reduction up to it).
    func cellChannels(_ index: Int) -> Int {
        var c = space.channels
        for i in 0...index where space.reductions.contains(i) { c *= 2 }
        return c
    }
}

/// ⌊Σ_i σ(ν_i)⌋ of every mask of an op, by mask name ("mask_mid", "mask_out"); 0 = the mask keeps nothing.
func exportedChannels(_ params: [String: Parameter]) -> [String: Int] {
    var channels: [String: Int] = [:]
    for (name, p) in params where name.hasPrefix("mask_") && name.hasSuffix(".logits") {
        let sum = (0..<p.count).reduce(0.0) { $0 + 1 / (1 + exp(-Double(p.value[$1]))) }
        channels[String(name.dropLast(".logits".count))] = Int(sum.rounded(.down))
    }
    return channels
}

/// What an exported op (no masks, affine) costs, measured by the accountant: forward FLOPs and
/// bytes (kept activations + 3 × parameter bytes). Cached by component, settings and input shape.
final class ExportedOpCosts: @unchecked Sendable {
    static let shared = ExportedOpCosts()
    private let lock = NSLock()
    private var cache: [String: (flops: Double, bytes: Double)] = [:]

    func measure(_ component: Component, channels c: Int, stride: Int, settings: [String: String], input shape: [Int]) throws -> (flops: Double, bytes: Double) {
        let key = "\(component.id)|\(c)|\(stride)|\(settings.sorted { $0.key < $1.key })|\(shape)"
        if let hit = lock.withLock({ cache[key] }) { return hit }
        let op = try PluginOp(component, context: HostContext(accountant: MemoryAccountant(mode: .dryRun), seed: 0),
                              config: OpConfig(inChannels: c, outChannels: c, stride: stride, affine: true), settings: settings, ownerPath: "cost")
        let cost = try measureCost(shape, parameters: op.parameters) { g, x in try op(g, x) }
        let r = (flops: cost.flops, bytes: cost.bytes)
        lock.withLock { cache[key] = r }
        return r
    }
}

extension SearchRun {
    /// The "channels/…" targets of every masked op: parameters per convolution, and FLOPs and
    /// memory per op once a forward has given the edges' input shapes.
    public func channelMaskTargets() throws -> [RegularizerTarget] {
        var targets: [RegularizerTarget] = []
        func grad(_ p: Parameter) throws -> Tensor? { p.requiresGrad ? try p.ensureGrad() : nil }
        func constant(_ value: Float, like p: Parameter) throws -> Tensor {
            try Tensor.from([Float](repeating: value, count: p.count), shape: p.shape, category: .workspace, accountant: accountant)
        }
        for op in supernet.channelMaskedOps() {
            // Parameters: every convolution with masked input or output channels, read from the op's IR.
            for conv in try op.op.currentIR().maskedConvolutions {
                let parts = try conv.parameterCostParts.map { part -> (Parameter, Float) in
                    guard let p = op.params[part.mask.logits] else {
                        throw EspalierError.invalidArgument("\(op.path): the IR's mask \(part.mask.logits) is not a parameter of the op")
                    }
                    return (p, Float(part.cost))
                }
                guard !parts.isEmpty else { continue }
                let name = conv.weight.hasSuffix(".weight") ? String(conv.weight.dropLast(".weight".count)) : conv.weight
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/\(name)/params", values: parts.map(\.0.value),
                                                 grads: try parts.map { try grad($0.0) }, costs: try parts.map { try constant($0.1, like: $0.0) }))
            }
            // FLOPs, memory and the concat block: FiGS's ops (their masks' names), until the IR prices them too.
            guard let out = op.params["mask_out.logits"] else { continue }
            let mid = op.params["mask_mid.logits"]
            // Concat aggregator: the op's block of its node's 1×1 conv, C_node weights per kept output channel.
            let column = op.cell.edges[op.edge].concatColumns[op.column]
            if let column {
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/concat/params", values: [out.value],
                                                 grads: [try grad(out)], costs: [try constant(Float(column.shape[0]), like: out)]))
            }
            guard let (a, b) = try exportedCostLine(op) else { continue }
            let c = Float(out.count)
            let perChannel = try column.map { try concatColumnCost(op, nodeChannels: $0.shape[0]) } ?? (flops: 0, bytes: 0)
            for (kind, aK, bK, colK) in [("flops", a.flops, b.flops, perChannel.flops), ("memory", a.bytes, b.bytes, perChannel.bytes)] {
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/out/\(kind)", values: [out.value],
                                                 grads: [try grad(out)], costs: [try constant(Float(aK) / c + Float(colK), like: out)]))
                if let mid {
                    targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/mid/\(kind)", values: [mid.value, out.value],
                                                     grads: [try grad(mid), try grad(out)],
                                                     costs: [try constant(Float(bK), like: mid), try constant(1 / c, like: out)]))
                }
            }
        }
        return targets
    }

    /// The exported op's cost as a line in its intermediate width M, F(M) = a + b·M (FLOPs and
    /// bytes; b = 0 without an intermediate mask), from the accountant; nil before the first forward.
    func exportedCostLine(_ op: ChannelMaskedOp) throws -> (a: (flops: Double, bytes: Double), b: (flops: Double, bytes: Double))? {
        guard var shape = op.cell.lastInputShape else { return nil }
        shape[1] /= op.cell.partial
        let stride = op.cell.reduction && op.cell.isInputEdge(op.edge) ? 2 : 1
        let component = try registry.require(op.id, kind: .op)
        let c = op.params["mask_out.logits"]!.count
        var settings = config.opSettings[op.id] ?? [:]
        settings["masks"] = "false"
        let full = try ExportedOpCosts.shared.measure(component, channels: c, stride: stride, settings: settings, input: shape)
        guard let mid = op.params["mask_mid.logits"], mid.count >= 2 else { return (full, (0, 0)) }
        settings["mid_channels"] = String(mid.count - 1)
        let less = try ExportedOpCosts.shared.measure(component, channels: c, stride: stride, settings: settings, input: shape)
        let b = (flops: full.flops - less.flops, bytes: full.bytes - less.bytes)
        let m = Double(mid.count)
        return ((full.flops - m * b.flops, full.bytes - m * b.bytes), b)
    }

    /// Concat aggregator: what one input channel of the node's 1×1 convolution costs (the op's
    /// block at width 2 minus width 1, built in a dry-run accountant on the op's output shape of
    /// the last forward): forward FLOPs, and bytes of its weights with their gradients and momentum.
    func concatColumnCost(_ op: ChannelMaskedOp, nodeChannels: Int) throws -> (flops: Double, bytes: Double) {
        guard let shape = op.cell.lastInputShape else { return (0, 0) }
        let stride = op.cell.reduction && op.cell.isInputEdge(op.edge) ? 2 : 1
        // The block's output (N, C_node, H', W') is the same at both widths, so the difference is its
        // weights (3 × 4 bytes each) and FLOPs per input channel.
        func measure(_ width: Int) throws -> (bytes: Double, flops: Double) {
            let conv = try Conv2d(ParameterFactory(accountant: MemoryAccountant(mode: .dryRun), seed: 0), name: "cost", cIn: width, cOut: nodeChannels, kernel: 1)
            return try measureCost([shape[0], width, shape[2] / stride, shape[3] / stride], parameters: conv.parameters) { g, x in try conv(g, x) }
        }
        let one = try measure(1), two = try measure(2)
        return (two.flops - one.flops, two.bytes - one.bytes)
    }

    /// The weights whose gradient norm the weight step clips: every weight but the channel-mask
    /// logits. Their gradients (the data loss through the gate plus the cost regularizer, one per
    /// channel of every op) would otherwise dominate the norm, so the clip would cap how far any
    /// mask can move in a run and shrink the other weights' steps with it.
    public var clippedWeights: [Parameter] {
        let masks = Set(supernet.channelMaskedOps().flatMap { op in
            ((try? op.op.currentIR().channelMasks) ?? []).compactMap { op.params[$0.logits].map(ObjectIdentifier.init) }
        })
        return masks.isEmpty ? supernet.weights : supernet.weights.filter { !masks.contains(ObjectIdentifier($0)) }
    }

    /// After a backward: the gate-weight regularizers' terms on the channel masks, their gradients
    /// added into the mask logits' gradients (when those are being trained). Returns the terms' sum.
    func applyChannelMaskRegularizers() throws -> Double {
        let regs = regularizers.filter { $0.hasLoss && $0.wants(.gateWeights) }
        guard !regs.isEmpty else { return 0 }
        let targets = try accountant.withOwner("regularizer") { try channelMaskTargets() }
        guard !targets.isEmpty else { return 0 }
        var total = 0.0
        for r in regs { total += try r.loss(targets, state: state) }
        return total
    }
}

/// One masked op of the search and its exported widths.
public struct ChannelMaskExport: Equatable, Sendable {
    /// The op's owner path in the supernet (e.g. "cell0/edge3/figs_sep_conv_3x3") and its component id.
    public var path: String
    public var op: String
    /// ⌊Σπ⌋ of each mask, by mask name ("mask_mid", "mask_out"); 0 = the op is dropped.
    public var channels: [String: Int]
    /// Settings that build the exported op: no masks, `mid_channels` = ⌊Σπ_mid⌋ for ops with an
    /// intermediate mask (empty for a dropped op).
    public var settings: [String: String]
    /// False when a mask keeps no channel: the exported network has no such op.
    public var kept: Bool { channels.values.allSatisfy { $0 > 0 } }
}

extension SearchRun {
    /// FiGS's export: for every op with channel masks, ⌊Σ_i σ(ν_i)⌋ channels per mask.
    public func channelMaskExport() -> [ChannelMaskExport] {
        supernet.channelMaskedOps().filter { $0.params["mask_out.logits"] != nil }.map { exportEntry($0) }.sorted { $0.path < $1.path }
    }

    func exportEntry(_ op: ChannelMaskedOp) -> ChannelMaskExport {
        let channels = exportedChannels(op.params)
        var e = ChannelMaskExport(path: op.path, op: op.id, channels: channels, settings: [:])
        if e.kept {
            e.settings = config.opSettings[op.id] ?? [:]
            e.settings["masks"] = "false"
            if let m = channels["mask_mid"] { e.settings["mid_channels"] = String(m) }
        }
        return e
    }

    /// The exported FiGS network as a genotype: one `per_cell` entry per cell of the supernet with
    /// every active op of every edge (any number per edge and per node) except `none`, masked ops
    /// at their exported widths and dropped when a mask keeps no channel; ops without masks are
    /// kept as they are. With the concat aggregator a masked op's output width is ⌊Σπ_out⌋ (the
    /// cell's `out_channels`), and the genotype's nodes concatenate. `normal`/`reduce` repeat the first cell of each type.
    public func channelMaskGenotype() throws -> Genotype {
        guard supernet.space.partialChannels == 1 else {
            throw EspalierError.config("FiGS export: the supernet uses partial channels (K=\(supernet.space.partialChannels)); export needs every channel in the ops")
        }
        let names = supernet.space.opNames
        var genes: [Genotype.CellGene] = []
        var usedIDs: [String: String] = [:]
        let nodes = supernet.space.nodes
        let concatNodes = supernet.space.aggregator == .concat
        for (i, cell) in supernet.cells.enumerated() {
            var edges: [Genotype.Edge] = [], settings: [[String: String]] = [], sizes: [Int] = [], widths: [Int] = []
            let c = supernet.cellChannels(i)
            var e = 0
            for n in 0..<nodes {
                var size = 0
                for j in 0..<(2 + n) {
                    let edge = cell.edges[e]
                    for case let (o, op?) in edge.ops.enumerated() where names[o] != "none" && edge.states[o] == .active {
                        let params = Supernet.maskParameters(op)
                        var s: [String: String] = [:], width = c
                        if params["mask_out.logits"] != nil {
                            let entry = exportEntry(ChannelMaskedOp(op: op, path: op.ownerPath, id: op.component.id, params: params, cell: cell, edge: e, column: o))
                            guard entry.kept else { continue }
                            s = entry.settings
                            if concatNodes, let kept = entry.channels["mask_out"] { width = kept }
                        }
                        edges.append(Genotype.Edge(names[o], j))
                        settings.append(s)
                        widths.append(width)
                        usedIDs[names[o]] = op.component.id
                        size += 1
                    }
                    e += 1
                }
                sizes.append(size)
            }
            let concat = Array((2 + nodes - supernet.space.multiplier)..<(2 + nodes))
            var gene = Genotype.CellGene(reduction: cell.reduction, channels: c, edges: edges, nodeSizes: sizes, concat: concat, opSettings: settings)
            if concatNodes { gene.outChannels = widths }
            genes.append(gene)
        }
        guard let firstNormal = genes.first(where: { !$0.reduction }) ?? genes.first else {
            throw EspalierError.config("FiGS export: the supernet has no cells")
        }
        let firstReduce = genes.first(where: \.reduction) ?? firstNormal
        var g = Genotype(normal: firstNormal.edges, normalConcat: firstNormal.concat, reduce: firstReduce.edges, reduceConcat: firstReduce.concat,
                         opIDs: usedIDs)
        g.normalNodeSizes = firstNormal.nodeSizes
        g.reduceNodeSizes = firstReduce.nodeSizes
        g.perCell = genes
        if concatNodes { g.aggregator = .concat }
        return g
    }
}
