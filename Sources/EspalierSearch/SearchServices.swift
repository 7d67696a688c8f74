// The search services of one run: what a strategy plugin acts through (`host->search`), behind
// the `SearchServiceProvider` protocol whose C thunks live in EspalierHost. They hold the state
// that serves plugins alone: named values (set and published), the step's batches for
// `batch_loss`, and a prediction's view of the strategy's op states. Not here: the trainer's
// work they call on (child training in SearchRun+Child.swift, growth in SearchRun+Grow.swift,
// forward logits on re-initialised weights in SearchRun+ZeroShot.swift, memory predictions in
// SearchRun+Predict.swift) and any strategy's own logic (Plugins/).

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

/// What any strategy plugin gets from a running search, whatever its method: the space, its
/// architecture logits and op and input states; named values it sets (gate.NAME, regularizer.NAME,
/// arch.lr, lr, skip_dropout; checkpointed) and values the host publishes for it (group norms,
/// section memory figures and cost targets; recomputed, never checkpointed); the predicted step
/// peak after a change; forward logits on re-initialised weights (zero-shot scores); child
/// training; the loss on the step's batches; growth; and the ranks. Host thread only.
public final class SearchServices: SearchServiceProvider {
    /// The run the services act on (it owns them).
    unowned let run: SearchRun
    /// Named scalars set through the services (checkpointed).
    var values: [String: Double] = [:]
    /// Read-only values the host publishes for strategies (group norms, section memory figures):
    /// answered by get_value, never checkpointed (they are recomputed from the run's state).
    var published: [String: Double] = [:]
    /// The batches of the step being taken, set by `SearchRun.step(train:valid:)` for the step's
    /// duration (plan_step, the step, after_step) so that strategies can score children on them
    /// (`batch_loss`); nil between steps.
    public var stepBatches: StepBatches? = nil
    /// In a prediction's dry run: the op states as the strategy set them (`get_op_state` answers
    /// these, see `setOpState(cellType:…)`); nil in a real run.
    var predictionView: PredictionChoices? = nil

    init(run: SearchRun) { self.run = run }

    /// Op ids as C strings that live for the process (the header promises static strings), shared
    /// by every run's services so that dry runs do not each leak a copy.
    private nonisolated(unsafe) static var opNameStrings: [String: UnsafeMutablePointer<CChar>] = [:]

    // MARK: - The space

    public func spaceInfo() throws -> es_space_info {
        let sp = run.supernet.space
        var i = es_space_info()
        i.struct_size = UInt32(MemoryLayout<es_space_info>.size)
        i.cell_types = Int32(run.supernet.slotCount)
        i.hyper_connected = sp.hyperConnected ? 1 : 0
        i.edges = Int32(sp.edgesPerCell)
        i.ops = Int32(sp.ops.count)
        i.nodes = Int32(sp.nodes)
        i.cells = Int32(sp.cells)
        return i
    }

    public func opName(_ index: Int) throws -> UnsafePointer<CChar> {
        let ops = run.supernet.space.ops
        guard index >= 0, index < ops.count else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "op index \(index) outside 0..<\(ops.count)") }
        let id = ops[index]
        if let s = Self.opNameStrings[id] { return UnsafePointer(s) }
        let s = strdup(id)!
        Self.opNameStrings[id] = s
        return UnsafePointer(s)
    }

    /// A cell type's slot: 0 normal, 1 reduce; in a hyper-connected space cell type t is cell t.
    private func slot(_ t: Int) throws -> Int {
        let n = run.supernet.slotCount
        guard t >= 0, t < n else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: run.supernet.hyperConnected
                ? "cell type \(t): this hyper-connected space has one cell type per cell, 0..<\(n)" : "cell type \(t): 0 is normal, 1 is reduce")
        }
        return t
    }

    public func archParameter(cellType: Int) throws -> Parameter { run.supernet.alphas[try slot(cellType)] }

    public func setOpState(cellType: Int, edge: Int, op: Int, _ state: es_op_state) throws {
        guard let st = OpState(rawValue: state) else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "op state \(state): 0 active, 1 masked, 2 removed") }
        try setOpState(slot: try slot(cellType), edge: edge, op: op, st)
    }

    public func opState(cellType: Int, edge: Int, op: Int) throws -> es_op_state {
        let sp = run.supernet.space
        guard edge >= 0, edge < sp.edgesPerCell, op >= 0, op < sp.ops.count else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "get_op_state: edge \(edge) / op \(op) outside the space, or no out pointer")
        }
        return opState(slot: try slot(cellType), edge: edge, op: op).rawValue
    }

    /// ABI 1.2: inter-cell inputs of a hyper-connected space.
    private func inputCell(_ cell: Int) throws -> Int {
        guard run.supernet.hyperConnected else {
            throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "inter-cell inputs exist only in the hyper-connected space (--hyper-connected, or a strategy's hyper_connected=true)")
        }
        guard cell >= 0, cell < run.supernet.cells.count else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "cell \(cell) outside 0..<\(run.supernet.cells.count)")
        }
        return cell
    }

    public func inputParameter(cell: Int) throws -> Parameter { run.supernet.inputAlphas[try inputCell(cell)] }

    public func setInputState(cell: Int, input: Int, _ state: es_op_state) throws {
        guard let st = OpState(rawValue: state) else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "input state \(state): 0 active, 1 masked, 2 removed") }
        try run.setInputState(cell: try inputCell(cell), input: input, st)
    }

    public func inputState(cell: Int, input: Int) throws -> es_op_state {
        try run.supernet.inputState(cell: try inputCell(cell), input: input).rawValue
    }

    // MARK: - Named values

    /// Named scalars a strategy may set: `gate.NAME` (the gate's own values, e.g. gate.tau, set
    /// on every instance of the run's gate: `Supernet.archGates`), `arch.lr`, `lr` (weights, this epoch).
    public func setValue(_ name: String, _ value: Double) throws {
        if name.hasPrefix("gate.") {
            let key = String(name.dropFirst(5))
            for gate in run.supernet.archGates { try gate.setValue(key, value) }
            values[name] = value
            return
        }
        if name.hasPrefix("regularizer.") {
            let key = String(name.dropFirst(12))
            guard !run.regularizers.isEmpty else {
                throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "\(name): this search has no regularizer (add one with --regularizer ID)")
            }
            for r in run.regularizers { try r.setValue(key, value) }
            values[name] = value
            return
        }
        switch name {
        case "arch.lr": run.archOptimizer.learningRate = Float(value)
        case "lr": run.weightOptimizer.learningRate = Float(value)
        case "skip_dropout":
            guard value >= 0, value < 1 else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "skip_dropout must be in [0, 1) (got \(value))") }
            run.supernet.skipDropout = Float(value)
        default:
            throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "unknown value '\(name)'; this search has gate.NAME (the gate's values), regularizer.NAME, arch.lr, lr and skip_dropout")
        }
        values[name] = value
    }

    public func value(_ name: String) throws -> Double {
        let supernet = run.supernet
        switch name {
        case "arch.lr": return Double(run.archOptimizer.learningRate)
        case "lr": return Double(run.weightOptimizer.learningRate)
        case "skip_dropout": return Double(supernet.skipDropout)
        case "space.partial_channels": return Double(supernet.space.partialChannels)
        case "space.edge_normalization": return supernet.space.edgeNormalization ? 1 : 0
        case "space.cells": return Double(supernet.space.cells)
        case "space.hyper_connected": return supernet.space.hyperConnected ? 1 : 0
        case "space.classes": return Double(supernet.space.classes)
        case "batch": return Double(run.config.batchSize)
        default:
            guard let v = values[name] ?? published[name] else {
                throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "no value '\(name)' has been set; known: arch.lr, lr, batch, skip_dropout, space.partial_channels, space.edge_normalization, space.cells, space.classes, group_norm/TYPE/edgeE/OP (GSparsity), and gate.NAME / regularizer.NAME once set")
            }
            return v
        }
    }

    /// Every named value as get_value answers it (set values win over published ones).
    var namedValues: [String: Double] { values.merging(published) { own, _ in own } }

    // MARK: - Memory, scores, children, growth, ranks

    public func memoryReport(change: String) throws -> es_memory_report {
        let p = try run.predictPeak(change: change)
        var r = es_memory_report()
        r.struct_size = UInt32(MemoryLayout<es_memory_report>.size)
        withUnsafeMutableBytes(of: &r.at_peak) { raw in
            for c in MemoryCategory.allCases {
                var v = p.accountant.peakByCategory[c]
                if c == .data { v -= p.datasetBytes }
                raw.storeBytes(of: UInt64(max(0, v)), toByteOffset: Int(c.rawValue) * 8, as: UInt64.self)
            }
        }
        r.peak_total = UInt64(p.stepPeak)
        r.budget = UInt64(run.accountant.budget ?? 0)
        return r
    }

    public func forwardLogits(batches: Int32, seed: UInt64, view: UnsafeMutablePointer<es_tensor_view>) throws {
        try run.forwardLogits(batches: batches, initSeed: seed, view: view)
    }

    public func trainChild(architecture json: String, steps: Int) throws -> Double { try run.trainChild(json: json, steps: steps) }

    public func batchLoss(validation: Bool, backward: Bool) throws -> (loss: Double, samples: Int) {
        try run.batchLoss(validation: validation, backward: backward)
    }

    public func grow(cells: Int) throws { try run.grow(cells: cells) }

    public var ranks: Communicator { run.ranks }

    // MARK: - The strategy's op states in a prediction

    /// A candidate's state as the strategy set it (`get_op_state`): in a prediction the
    /// strategy's own view, which may name other candidates than the supernet's (see below).
    func opState(slot: Int, edge: Int, op: Int) -> OpState {
        let k = run.supernet.space.ops.count
        if let view = predictionView?.view[slot], edge * k + op < view.count {
            return OpState(rawValue: view[edge * k + op]) ?? .active
        }
        return run.supernet.opState(slot: slot, edge: edge, op: op)
    }

    /// `set_op_state` from a strategy. In a prediction the strategy's choice rests on
    /// values a dry run does not have (α, scores, norms), so the host keeps the strategy's view
    /// (what `get_op_state` answers) and applies its counts instead: an edge on which the view has
    /// r removed and m masked candidates loses its r cheapest for good and masks the next m
    /// cheapest (bytes each keeps, measured once per candidate and shape), so the prediction
    /// bounds whichever candidates the real run drops. Elsewhere: the state as asked.
    func setOpState(slot: Int, edge: Int, op: Int, _ state: OpState) throws {
        guard let choices = predictionView else {
            return try run.setOpState(slot: slot, edge: edge, op: op, state)
        }
        let k = run.supernet.space.ops.count
        guard slot >= 0, slot < run.supernet.slotCount, edge >= 0, edge < run.supernet.space.edgesPerCell, op >= 0, op < k else {
            return try run.setOpState(slot: slot, edge: edge, op: op, state)   // the supernet names the mistake
        }
        var view = choices.view[slot] ?? run.opStates(slot: slot)
        if view.count != run.supernet.space.edgesPerCell * k { view = run.opStates(slot: slot) }
        if view[edge * k + op] == OpState.removed.rawValue && state != .removed {
            throw EspalierError.invalidArgument("candidate \(run.supernet.space.opNames[op]) on edge \(edge) was removed for good")
        }
        view[edge * k + op] = state.rawValue
        choices.view[slot] = view
        let row = Array(view[(edge * k)..<(edge * k + k)])
        let removed = row.filter { $0 == OpState.removed.rawValue }.count
        let masked = row.filter { $0 == OpState.masked.rawValue }.count
        let bytes = try run.candidateBytes(slot: slot, edge: edge)
        let cheapestFirst = (0..<k).sorted { bytes[$0] != bytes[$1] ? bytes[$0] < bytes[$1] : $0 < $1 }
        var gone = Set((0..<k).filter { run.supernet.opState(slot: slot, edge: edge, op: $0) == .removed })
        for o in cheapestFirst where gone.count < removed && !gone.contains(o) {
            try run.setOpState(slot: slot, edge: edge, op: o, .removed)
            gone.insert(o)
        }
        for (i, o) in cheapestFirst.filter({ !gone.contains($0) }).enumerated() {
            let want: OpState = i < masked ? .masked : .active
            if run.supernet.opState(slot: slot, edge: edge, op: o) != want { try run.setOpState(slot: slot, edge: edge, op: o, want) }
        }
    }
}

/// What a prediction keeps about a strategy's op states: per slot, (edges·ops) as the strategy
/// set them.
final class PredictionChoices {
    var view: [Int: [Int32]] = [:]
}
