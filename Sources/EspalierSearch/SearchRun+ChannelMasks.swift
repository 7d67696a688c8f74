// Channel masks in the common trainer: cost targets for the expected-cost regularizer and the
// export of the found network, for any op whose IR has a channel mask (a `channel_mask` node on a
// parameter's logits: OpIR+ChannelMasks.swift). Nothing here knows an op's names: masks, their
// convolutions and the op's output mask are read from the IR, and the exported op is built at
// chosen widths through `channel_width` (ABI 1.6), which the op asks in create for each mask.
//
// Targets. After every backward the host hands each gate-weight regularizer targets
// (ES_TARGET_GATE_WEIGHTS; parts = the logits ν of masks, costs = per-channel unit costs of the
// same shapes, grads = the logits' gradients, which the weight step then applies). The
// regularizer's expected cost of a target is Π_parts Σ_i c_i·σ(ν_i).
//   Parameters, per masked convolution ("channels/OP_PATH/CONV/params", CONV its weight's name
//   without ".weight"), from the IR (`MaskedConvolution.parameterCostParts`): a convolution with
//   Cin in and Cout out channels and a k_h×k_w kernel costs Cin·k_h·k_w per kept output channel
//   when only its output is masked, Cout·k_h·k_w per kept input channel when only its input is,
//   k_h·k_w per pair when both are (two parts), and k_h·k_w per kept channel when it is depthwise
//   on a masked value (convolutions with neither side masked have a constant cost and no target).
//   FLOPs and memory, per mask ("channels/OP_PATH/MASK/{flops,memory}", MASK its logits' name
//   without ".logits"), from the accountant: the exported op (no masks, affine) is built in a
//   dry-run accountant on the edge's input shape of the last forward (as the per-candidate costs
//   are), with every mask at its searched width and with each mask inside the op one channel
//   narrower: F = a + Σ_m b_m·M_m (a layer between two masks inside the op would make F bilinear:
//   such an op gets the linear part), so b_m is what one channel of mask m costs and a the rest.
//   The op's expected cost scales with the fraction of its output channels kept, when it has an
//   output mask (one whose channels reach the op's output through channel-keeping primitives):
//   E = (Σπ_out/C_out)·(a + Σ_m b_m·Σπ_m), given as one target per mask:
//     output mask: parts [ν_out], costs a/C_out      mask m inside: parts [ν_m, ν_out], costs [b_m, 1/C_out]
//   (without an output mask: a is constant, and mask m's target is parts [ν_m], costs [b_m]). At
//   π ≡ 1 this is the accountant's figure of the op; with hard masks keeping m_i channels it is the
//   figure of the op built with those widths. FLOPs are the graph's forward FLOPs; bytes are the
//   activations its forward keeps plus parameters, gradients and momentum (3 × 4 bytes per weight),
//   as the per-candidate costs count.
// Export (FiGS §3.2): each mask keeps ⌊Σπ⌋ channels, π = σ(ν) (`channelMaskExport`), recorded per
// op as the width to build each mask at (`channel_widths` of a per-cell genotype, by the mask's
// logits name); the exported network hands them back through `channel_width`. An op with a mask
// keeping ⌊Σπ⌋ = 0 channels is dropped. An output mask's width is the op's C_out: with the sum
// aggregator a cell's op outputs are summed at the width C, so the output masks' counts are
// reported (and decide whether the op survives) but the exported ops keep C outputs; with the
// concat aggregator (FiGS §3.3) each exported op keeps ⌊Σπ_out⌋ outputs (`out_channels`) and its
// node's 1×1 convolution reads their concatenation, so the output mask also has a parameter target
// for its block of that convolution ("channels/OP_PATH/concat/params": parts [ν_out], cost C_node
// each) and the FLOPs and memory targets add what one channel of the block costs.
// `channelMaskGenotype` writes the network as a genotype with one `per_cell` entry per cell (every
// cell searched on its own).

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

/// One op with channel masks: its IR, owner path and parameters by the op's own names, and where it sits.
struct ChannelMaskedOp {
    let op: PluginOp
    let ir: OpIR
    let path: String
    let id: String
    let params: [String: Parameter]
    let cell: SearchCell
    let edge: Int
    let column: Int

    /// The logits of mask `m`, a parameter of the op.
    func logits(_ m: OpIR.ChannelMask) throws -> Parameter {
        guard let p = params[m.logits] else { throw EspalierError.invalidArgument("\(path): the IR's mask \(m.logits) is not a parameter of the op") }
        return p
    }

    /// ⌊Σ_i σ(ν_i)⌋ of every mask, by its logits' name; 0 = the mask keeps nothing.
    var keptChannels: [String: Int] {
        var channels: [String: Int] = [:]
        for m in ir.channelMasks {
            guard let p = params[m.logits] else { continue }
            let sum = (0..<p.count).reduce(0.0) { $0 + 1 / (1 + exp(-Double(p.value[$1]))) }
            channels[m.logits] = Int(sum.rounded(.down))
        }
        return channels
    }

    /// The masks of its IR whose width the op never asked in create: while any is left, its
    /// exported form cannot be built.
    var unaskedMasks: [String] { ir.channelMasks.map(\.logits).filter { op.maskWidths[$0] == nil } }
}

extension Supernet {
    /// Every op in the supernet whose IR has a channel mask.
    func channelMaskedOps() -> [ChannelMaskedOp] {
        var out: [ChannelMaskedOp] = []
        for cell in cells {
            for (e, edge) in cell.edges.enumerated() {
                for case let (o, op?) in edge.ops.enumerated() {
                    guard let ir = try? op.currentIR(), !ir.channelMasks.isEmpty else { continue }
                    out.append(ChannelMaskedOp(op: op, ir: ir, path: op.ownerPath, id: op.component.id, params: Self.maskParameters(op),
                                               cell: cell, edge: e, column: o))
                }
            }
        }
        return out
    }

    /// An op's parameters by the op's own names (the IR's leaf names).
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

/// What an exported op (no masks, affine) costs at given mask widths, measured by the accountant:
/// forward FLOPs and bytes (kept activations + 3 × parameter bytes). Cached by component,
/// config, settings, widths and input shape.
final class ExportedOpCosts: @unchecked Sendable {
    static let shared = ExportedOpCosts()
    private let lock = NSLock()
    private var cache: [String: (flops: Double, bytes: Double)] = [:]

    func measure(_ component: Component, config: OpConfig, settings: [String: String], widths: [String: Int], input shape: [Int]) throws -> (flops: Double, bytes: Double) {
        let key = "\(component.id)|\(config.inChannels)|\(config.outChannels)|\(config.stride)|\(settings.sorted { $0.key < $1.key })|\(widths.sorted { $0.key < $1.key })|\(shape)"
        if let hit = lock.withLock({ cache[key] }) { return hit }
        var exported = config
        exported.affine = true
        let op = try PluginOp(component, context: HostContext(accountant: MemoryAccountant(mode: .dryRun), seed: 0),
                              config: exported, settings: settings, ownerPath: "cost", exportedWidths: widths)
        let cost = try measureCost(shape, parameters: op.parameters) { g, x in try op(g, x) }
        let r = (flops: cost.flops, bytes: cost.bytes)
        lock.withLock { cache[key] = r }
        return r
    }
}

extension SearchRun {
    /// The "channels/…" targets of every masked op: parameters per convolution, and FLOPs and
    /// memory per mask once a forward has given the edges' input shapes.
    public func channelMaskTargets() throws -> [RegularizerTarget] {
        var targets: [RegularizerTarget] = []
        func grad(_ p: Parameter) throws -> Tensor? { p.requiresGrad ? try p.ensureGrad() : nil }
        func constant(_ value: Float, like p: Parameter) throws -> Tensor {
            try Tensor.from([Float](repeating: value, count: p.count), shape: p.shape, category: .workspace, accountant: accountant)
        }
        func maskName(_ m: OpIR.ChannelMask) -> String { m.logits.hasSuffix(".logits") ? String(m.logits.dropLast(".logits".count)) : m.logits }
        for op in supernet.channelMaskedOps() {
            // Parameters: every convolution with masked input or output channels.
            for conv in op.ir.maskedConvolutions {
                let parts = try conv.parameterCostParts.map { (try op.logits($0.mask), Float($0.cost)) }
                guard !parts.isEmpty else { continue }
                let name = conv.weight.hasSuffix(".weight") ? String(conv.weight.dropLast(".weight".count)) : conv.weight
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/\(name)/params", values: parts.map(\.0.value),
                                                 grads: try parts.map { try grad($0.0) }, costs: try parts.map { try constant($0.1, like: $0.0) }))
            }
            let outMask = op.ir.outputMask
            let out = try outMask.map { try op.logits($0) }
            // Concat aggregator: the op's block of its node's 1×1 conv, C_node weights per kept output channel.
            let column = out == nil ? nil : op.cell.edges[op.edge].concatColumns[op.column]
            if let out, let column {
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/concat/params", values: [out.value],
                                                 grads: [try grad(out)], costs: [try constant(Float(column.shape[0]), like: out)]))
            }
            // FLOPs and memory: the exported op's cost line in its masks' widths.
            guard let line = try exportedCostLine(op) else { continue }
            let perChannel = try column.map { try concatColumnCost(op, nodeChannels: $0.shape[0]) } ?? (flops: 0, bytes: 0)
            for kind in ["flops", "memory"] {
                func pick(_ f: (flops: Double, bytes: Double)) -> Double { kind == "flops" ? f.flops : f.bytes }
                if let out, let outMask {
                    let c = Float(out.count)
                    targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/\(maskName(outMask))/\(kind)", values: [out.value],
                                                     grads: [try grad(out)], costs: [try constant(Float(pick(line.a)) / c + Float(pick(perChannel)), like: out)]))
                    for (m, b) in line.b {
                        let p = try op.logits(m)
                        targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/\(maskName(m))/\(kind)", values: [p.value, out.value],
                                                         grads: [try grad(p), try grad(out)],
                                                         costs: [try constant(Float(pick(b)), like: p), try constant(1 / c, like: out)]))
                    }
                } else {
                    for (m, b) in line.b {
                        let p = try op.logits(m)
                        targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/\(maskName(m))/\(kind)", values: [p.value],
                                                         grads: [try grad(p)], costs: [try constant(Float(pick(b)), like: p)]))
                    }
                }
            }
        }
        return targets
    }

    /// The exported op's cost as a line in the widths M_m of its masks inside the op,
    /// F = a + Σ_m b_m·M_m (FLOPs and bytes), from the accountant; nil before the first forward
    /// and for an op that does not ask its masks' widths (its exported form cannot be built).
    func exportedCostLine(_ op: ChannelMaskedOp) throws -> (a: (flops: Double, bytes: Double), b: [(OpIR.ChannelMask, (flops: Double, bytes: Double))])? {
        guard var shape = op.cell.lastInputShape, op.unaskedMasks.isEmpty else { return nil }
        shape[1] /= op.cell.partial
        let component = try registry.require(op.id, kind: .op)
        let settings = config.opSettings[op.id] ?? [:]
        let widths = op.op.maskWidths
        func measure(_ w: [String: Int]) throws -> (flops: Double, bytes: Double) {
            try ExportedOpCosts.shared.measure(component, config: op.op.config, settings: settings, widths: w, input: shape)
        }
        let full = try measure(widths)
        var a = full, b: [(OpIR.ChannelMask, (flops: Double, bytes: Double))] = []
        for m in op.ir.channelMasks where m.logits != op.ir.outputMask?.logits {
            guard let width = widths[m.logits], width >= 2 else { continue }
            var narrower = widths
            narrower[m.logits] = width - 1
            let less = try measure(narrower)
            let bm = (flops: full.flops - less.flops, bytes: full.bytes - less.bytes)
            b.append((m, bm))
            a = (a.flops - Double(width) * bm.flops, a.bytes - Double(width) * bm.bytes)
        }
        return (a, b)
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
            op.ir.channelMasks.compactMap { op.params[$0.logits].map(ObjectIdentifier.init) }
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
    /// The op's owner path in the supernet (e.g. "model/cell0/edge3/OP") and its component id.
    public var path: String
    public var op: String
    /// ⌊Σπ⌋ of each mask, by its logits' name (the IR's leaf name); 0 = the op is dropped.
    public var channels: [String: Int]
    /// The width the exported op builds each mask's channels at (`channel_width`), by the same
    /// names: ⌊Σπ⌋ inside the op, C_out for its output mask (empty for a dropped op).
    public var widths: [String: Int]
    /// The exported op's output width: C where nodes sum, ⌊Σπ_out⌋ of its output mask where they concatenate.
    public var outChannels: Int
    /// False when a mask keeps no channel: the exported network has no such op.
    public var kept: Bool { channels.values.allSatisfy { $0 > 0 } }
}

extension SearchRun {
    /// The export of channel masks: for every op with channel masks, ⌊Σ_i σ(ν_i)⌋ channels per mask.
    public func channelMaskExport() throws -> [ChannelMaskExport] {
        try supernet.channelMaskedOps().map { try exportEntry($0) }.sorted { $0.path < $1.path }
    }

    func exportEntry(_ op: ChannelMaskedOp) throws -> ChannelMaskExport {
        let channels = op.keptChannels
        let outMask = op.ir.outputMask?.logits
        var e = ChannelMaskExport(path: op.path, op: op.id, channels: channels, widths: [:], outChannels: op.op.config.outChannels)
        guard e.kept else { return e }
        let missing = op.unaskedMasks
        if !missing.isEmpty {
            throw EspalierError.config("\(op.path): \(op.id) applies the channel mask\(missing.count == 1 ? "" : "s") \(missing.joined(separator: ", ")) "
                                       + "but never asked the host its width (host->channel_width in create, ABI 1.6), so its exported form cannot be built; "
                                       + "the op's author must ask it for every mask")
        }
        if let outMask, supernet.space.aggregator == .concat, let kept = channels[outMask] { e.outChannels = kept }
        for (mask, searched) in op.op.maskWidths {
            e.widths[mask] = mask == outMask ? e.outChannels : min(channels[mask] ?? searched, searched)
        }
        return e
    }

    /// The exported network as a genotype: one `per_cell` entry per cell of the supernet with
    /// every active op of every edge (any number per edge and per node) except `none`, masked ops
    /// at their exported widths (`channel_widths`) and dropped when a mask keeps no channel; ops
    /// without masks are kept as they are. With the concat aggregator a masked op's output width
    /// is ⌊Σπ_out⌋ (the cell's `out_channels`), and the genotype's nodes concatenate.
    /// `normal`/`reduce` repeat the first cell of each type.
    public func channelMaskGenotype() throws -> Genotype {
        guard supernet.space.partialChannels == 1 else {
            throw EspalierError.config("channel-mask export: the supernet uses partial channels (K=\(supernet.space.partialChannels)); export needs every channel in the ops")
        }
        let names = supernet.space.opNames
        var genes: [Genotype.CellGene] = []
        var usedIDs: [String: String] = [:]
        let nodes = supernet.space.nodes
        let concatNodes = supernet.space.aggregator == .concat
        let masked = Dictionary(supernet.channelMaskedOps().map { (ObjectIdentifier($0.op), $0) }) { a, _ in a }
        for (i, cell) in supernet.cells.enumerated() {
            var edges: [Genotype.Edge] = [], sizes: [Int] = [], outWidths: [Int] = [], maskWidths: [[String: Int]] = []
            let c = supernet.cellChannels(i)
            var e = 0
            for n in 0..<nodes {
                var size = 0
                for j in 0..<(2 + n) {
                    let edge = cell.edges[e]
                    for case let (o, op?) in edge.ops.enumerated() where names[o] != "none" && edge.states[o] == .active {
                        var widths: [String: Int] = [:], width = c
                        if let m = masked[ObjectIdentifier(op)] {
                            let entry = try exportEntry(m)
                            guard entry.kept else { continue }
                            widths = entry.widths
                            width = entry.outChannels
                        }
                        edges.append(Genotype.Edge(names[o], j))
                        maskWidths.append(widths)
                        outWidths.append(width)
                        usedIDs[names[o]] = op.component.id
                        size += 1
                    }
                    e += 1
                }
                sizes.append(size)
            }
            let concat = Array((2 + nodes - supernet.space.multiplier)..<(2 + nodes))
            var gene = Genotype.CellGene(reduction: cell.reduction, channels: c, edges: edges, nodeSizes: sizes, concat: concat,
                                         opSettings: Array(repeating: [:], count: edges.count))
            if concatNodes { gene.outChannels = outWidths }
            if maskWidths.contains(where: { !$0.isEmpty }) { gene.channelWidths = maskWidths }
            genes.append(gene)
        }
        guard let firstNormal = genes.first(where: { !$0.reduction }) ?? genes.first else {
            throw EspalierError.config("channel-mask export: the supernet has no cells")
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
