// The supernet a search trains: stem, cells, classifier and auxiliary heads, α per slot and the
// gates that turn α into mixing weights, and the op and input states strategies change. Built from
// a SearchSpaceDescription (SearchSpaceDescription.swift); not the training loop (SearchRun).

import EspalierCore
import EspalierHost
import Foundation

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
    /// What the forward recomputes in backward instead of keeping (RecomputePlan.swift).
    public var recompute = RecomputePlan.none
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

    /// A prediction with a sampled gate: what a draw can hold above the dry run's on one edge at
    /// one moment, the most over the cells' forwards so far (SearchCell.pickCostliest).
    var drawMargin = 0

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
        // The stem's output is held by s0 and s1 only (and by `outputs` for hyper-connected cells,
        // which read every earlier output): a forward without tape frees it after cell 1. (Kept in
        // a binding of its own or in `outputs`, it stayed alive through every cell.)
        var s1 = try g.accountant.withOwner("stem") { try stemBN(g, try stemConv(g, x)) }
        var s0 = s1
        var outputs = space.hyperConnected ? [s1] : []
        var aux: [Variable] = []
        for (i, cell) in cells.enumerated() {
            let (w, a) = slotWeights[slot(of: cell)]
            // A prediction with a sampled gate: the costliest candidates stand for the drawn ones.
            let worstCase = !g.computing && g.accountant.isDryRun && !space.sumOps && gates[slot(of: cell)].isSampled
            let whole = recompute.recomputes("cell\(i)", at: .cells) && cell.isRecomputable
            cell.recompute = whole ? .none : recompute
            let out: Variable
            if space.hyperConnected {
                let iw = inputWeights.isEmpty ? nil : inputWeights[i]
                let earlier = space.hyperSources(cell: i).map { outputs[$0 + 1] }, previous = outputs[i]
                out = try recomputed(g, cell: i, whole, inputs: earlier + [previous]) {
                    try cell.forward(g, earlier: earlier, previous, weights: w, active: a, inputWeights: iw?.0, inputActive: iw?.1, state: state,
                                     skipDropout: self.skipDropout, worstCase: worstCase)
                }
                outputs.append(out)
            } else if !g.isRecording && !whole {
                // Without tape, cell i−2's output is read by this cell's pre0 alone: handed over, it is
                // freed before the cell's nodes run (at a reduction cell, the peak of a zero-shot forward).
                let handed = HandedInput(s0)
                s0 = s1
                out = try cell.forward(g, handing: handed, s1, weights: w, active: a, edgeWeights: cell.reduction ? br : bn, state: state,
                                       skipDropout: self.skipDropout, worstCase: worstCase)
            } else {
                let (c0, c1) = (s0, s1)
                out = try recomputed(g, cell: i, whole, inputs: [c0, c1]) {
                    try cell.forward(g, c0, c1, weights: w, active: a, edgeWeights: cell.reduction ? br : bn, state: state,
                                     skipDropout: self.skipDropout, worstCase: worstCase)
                }
            }
            if worstCase { drawMargin = max(drawMargin, cell.drawMargin) }
            s0 = s1
            s1 = out
            if g.training, let head = auxHeads.first(where: { $0.cell == i })?.head {
                aux.append(try g.accountant.withOwner("aux\(i)") { try head(g, try g.globalAvgPool(out)) })
            }
        }
        lastAuxLogits = aux
        return try g.accountant.withOwner("classifier") { try classifier(g, try g.globalAvgPool(s1)) }
    }

    /// `body` (cell i's forward), as one recomputed segment when `whole` (Graph.recomputed).
    private func recomputed(_ g: Graph, cell i: Int, _ whole: Bool, inputs: [Variable], _ body: @escaping () throws -> Variable) throws -> Variable {
        guard whole else { return try body() }
        return try g.recomputed("cell\(i)", inputs: inputs, body)
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
