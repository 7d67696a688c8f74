// The search services (`host->search` in espalier_strategy.h) for a running search: what a
// strategy plugin acts through. Each thunk finds the run through the services table's `host`
// (the run's HostContext, whose `searchDelegate` is the SearchRun) and never lets a Swift error
// cross into the plugin. Child training and step-batch losses (ABI 1.1) are implemented in
// SearchRun+Child.swift, growing in SearchRun+Grow.swift, zero-shot forward passes with
// re-initialised weights in SearchRun+ZeroShot.swift; named values and predictions below.

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

enum SearchServicesTable {
    /// One table for every run (plugins may keep the pointer); the run is found through `host`.
    static let table: UnsafeMutablePointer<es_search_services> = {
        let t = UnsafeMutablePointer<es_search_services>.allocate(capacity: 1)
        var s = es_search_services()
        s.struct_size = UInt32(MemoryLayout<es_search_services>.size)
        s.space_info = searchSpaceInfo
        s.op_name = searchOpName
        s.arch_view = searchArchView
        s.set_op_state = searchSetOpState
        s.get_op_state = searchGetOpState
        s.set_value = searchSetValue
        s.get_value = searchGetValue
        s.grow = searchGrow
        s.predict_peak = searchPredictPeak
        s.forward_logits = searchForwardLogits
        s.train_child = searchTrainChild
        s.batch_loss = searchBatchLoss
        s.input_view = searchInputView
        s.set_input_state = searchSetInputState
        s.get_input_state = searchGetInputState
        s.ranks = searchRanks
        s.sum_over_ranks = searchSumOverRanks
        t.initialize(to: s)
        return t
    }()
}

struct SearchServiceError: Error {
    let status: es_status
    let message: String
}

/// Runs `body` with the search of `host`; errors become a status and the context's message.
private func withSearch(_ host: UnsafeMutableRawPointer?, _ body: (SearchRun, HostContext) throws -> Void) -> es_status {
    guard let ctx = HostContext.from(host) else { return ES_ERROR_INVALID_ARGUMENT }
    guard let run = ctx.searchDelegate as? SearchRun else {
        ctx.setError("no search is running")
        return ES_ERROR_UNSUPPORTED
    }
    do { try body(run, ctx); return ES_OK } catch let e as SearchServiceError {
        ctx.setError(e.message); return e.status
    } catch let e as MemoryBudgetExceeded {
        ctx.setError(e.description); return ES_ERROR_BUDGET
    } catch {
        ctx.setError("\(error)"); return ES_ERROR_INVALID_ARGUMENT
    }
}

/// A cell type's slot: 0 normal, 1 reduce; in a hyper-connected space cell type t is cell t.
private func slot(_ t: Int32, _ run: SearchRun) throws -> Int {
    let n = run.supernet.slotCount
    guard t >= 0, Int(t) < n else {
        throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: run.supernet.hyperConnected
            ? "cell type \(t): this hyper-connected space has one cell type per cell, 0..<\(n)" : "cell type \(t): 0 is normal, 1 is reduce")
    }
    return Int(t)
}

private let searchSpaceInfo: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<es_space_info>?) -> es_status = { host, out in
    withSearch(host) { run, _ in
        guard let out else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "space_info needs an out pointer") }
        let sp = run.supernet.space
        var i = es_space_info()
        i.struct_size = UInt32(MemoryLayout<es_space_info>.size)
        i.cell_types = Int32(run.supernet.slotCount)
        i.hyper_connected = sp.hyperConnected ? 1 : 0
        i.edges = Int32(sp.edgesPerCell)
        i.ops = Int32(sp.ops.count)
        i.nodes = Int32(sp.nodes)
        i.cells = Int32(sp.cells)
        out.pointee = i
    }
}

/// Op ids as C strings that live for the process (the header promises static strings).
private nonisolated(unsafe) var opNameStrings: [String: UnsafeMutablePointer<CChar>] = [:]

private let searchOpName: @convention(c) (UnsafeMutableRawPointer?, Int32) -> UnsafePointer<CChar>? = { host, index in
    guard let ctx = HostContext.from(host), let run = ctx.searchDelegate as? SearchRun else { return nil }
    let ops = run.supernet.space.ops
    guard index >= 0, Int(index) < ops.count else { ctx.setError("op index \(index) outside 0..<\(ops.count)"); return nil }
    let id = ops[Int(index)]
    if opNameStrings[id] == nil { opNameStrings[id] = strdup(id) }
    return UnsafePointer(opNameStrings[id])
}

/// Writable views of a parameter's values and gradient (arch_view, input_view).
private func view(_ p: Parameter, _ logits: UnsafeMutablePointer<es_tensor_view>?, _ grad: UnsafeMutablePointer<es_tensor_view>?) throws {
    logits?.pointee = p.value.view
    if let grad { grad.pointee = try p.ensureGrad().view }
}

private let searchArchView: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafeMutablePointer<es_tensor_view>?, UnsafeMutablePointer<es_tensor_view>?) -> es_status = {
    host, type, logits, grad in
    withSearch(host) { run, _ in
        try view(run.supernet.alphas[try slot(type, run)], logits, grad)
    }
}

private let searchSetOpState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, Int32, es_op_state) -> es_status = { host, type, edge, op, state in
    withSearch(host) { run, _ in
        guard let st = OpState(rawValue: state) else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "op state \(state): 0 active, 1 masked, 2 removed") }
        try run.strategySetOpState(slot: try slot(type, run), edge: Int(edge), op: Int(op), st)
    }
}

private let searchGetOpState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, Int32, UnsafeMutablePointer<es_op_state>?) -> es_status = { host, type, edge, op, out in
    withSearch(host) { run, _ in
        let sp = run.supernet.space
        guard let out, edge >= 0, Int(edge) < sp.edgesPerCell, op >= 0, Int(op) < sp.ops.count else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "get_op_state: edge \(edge) / op \(op) outside the space, or no out pointer")
        }
        out.pointee = run.strategyOpState(slot: try slot(type, run), edge: Int(edge), op: Int(op)).rawValue
    }
}

/// ABI 1.2: inter-cell inputs of a hyper-connected space.
private func inputCell(_ cell: Int32, _ run: SearchRun) throws -> Int {
    guard run.supernet.hyperConnected else {
        throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "inter-cell inputs exist only in the hyper-connected space (--hyper-connected, or a strategy's hyper_connected=true)")
    }
    guard cell >= 0, Int(cell) < run.supernet.cells.count else {
        throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "cell \(cell) outside 0..<\(run.supernet.cells.count)")
    }
    return Int(cell)
}

private let searchInputView: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafeMutablePointer<es_tensor_view>?, UnsafeMutablePointer<es_tensor_view>?) -> es_status = {
    host, cell, logits, grad in
    withSearch(host) { run, _ in
        try view(run.supernet.inputAlphas[try inputCell(cell, run)], logits, grad)
    }
}

private let searchSetInputState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, es_op_state) -> es_status = { host, cell, input, state in
    withSearch(host) { run, _ in
        guard let st = OpState(rawValue: state) else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "input state \(state): 0 active, 1 masked, 2 removed") }
        try run.setInputState(cell: try inputCell(cell, run), input: Int(input), st)
    }
}

private let searchGetInputState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, UnsafeMutablePointer<es_op_state>?) -> es_status = { host, cell, input, out in
    withSearch(host) { run, _ in
        guard let out else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "get_input_state needs an out pointer") }
        out.pointee = try run.supernet.inputState(cell: try inputCell(cell, run), input: Int(input)).rawValue
    }
}

private let searchSetValue: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Double) -> es_status = { host, name, value in
    withSearch(host) { run, _ in
        guard let name else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "set_value needs a name") }
        try run.setValue(String(cString: name), value)
    }
}

private let searchGetValue: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<Double>?) -> es_status = { host, name, out in
    withSearch(host) { run, _ in
        guard let name, let out else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "get_value needs a name and an out pointer") }
        out.pointee = try run.value(String(cString: name))
    }
}

private let searchGrow: @convention(c) (UnsafeMutableRawPointer?, Int32) -> es_status = { host, cells in
    withSearch(host) { run, _ in try run.grow(cells: Int(cells)) }
}

private let searchPredictPeak: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<es_memory_report>?) -> es_status = { host, change, out in
    withSearch(host) { run, _ in
        guard let out else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "predict_peak needs an out pointer") }
        let text = change.map { String(cString: $0) } ?? "{}"
        let p = try run.predictPeak(change: text)
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
        out.pointee = r
    }
}

/// Zero-shot scoring: implemented in SearchRun+ZeroShot.swift.
private let searchForwardLogits: @convention(c) (UnsafeMutableRawPointer?, Int32, UInt64, UnsafeMutablePointer<es_tensor_view>?) -> es_status = {
    host, batches, seed, logits in
    withSearch(host) { run, _ in try run.forwardLogits(batches: batches, initSeed: seed, view: logits) }
}

private let searchTrainChild: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Int64, UnsafeMutablePointer<Double>?) -> es_status = {
    host, arch, steps, out in
    withSearch(host) { run, _ in
        guard let arch, let out else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "train_child needs an architecture (genotype JSON) and an out pointer")
        }
        out.pointee = try run.trainChild(json: String(cString: arch), steps: Int(steps))
    }
}

/// ABI 1.1: the loss of the supernet in its current op states on one of the step's batches.
private let searchBatchLoss: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, UnsafeMutablePointer<Double>?, UnsafeMutablePointer<Int64>?) -> es_status = {
    host, which, backward, loss, samples in
    withSearch(host) { run, _ in
        guard which == 0 || which == 1 else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "batch_loss: which \(which); 0 is the step's training batch, 1 its validation batch")
        }
        guard let loss else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "batch_loss needs a loss out pointer") }
        let r = try run.batchLoss(validation: which == 1, backward: backward != 0)
        loss.pointee = r.loss
        samples?.pointee = Int64(r.samples)
    }
}

extension SearchRun {
    /// Named scalars a strategy may set: `gate.NAME` (the gate's own values, e.g. gate.tau, set
    /// on every instance of the run's gate: `Supernet.archGates`), `arch.lr`, `lr` (weights, this epoch).
    public func setValue(_ name: String, _ value: Double) throws {
        if name.hasPrefix("gate.") {
            let key = String(name.dropFirst(5))
            for gate in supernet.archGates { try gate.setValue(key, value) }
            values[name] = value
            return
        }
        if name.hasPrefix("regularizer.") {
            let key = String(name.dropFirst(12))
            guard !regularizers.isEmpty else {
                throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "\(name): this search has no regularizer (add one with --regularizer ID)")
            }
            for r in regularizers { try r.setValue(key, value) }
            values[name] = value
            return
        }
        switch name {
        case "arch.lr": archOptimizer.learningRate = Float(value)
        case "lr": weightOptimizer.learningRate = Float(value)
        case "skip_dropout":
            guard value >= 0, value < 1 else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "skip_dropout must be in [0, 1) (got \(value))") }
            supernet.skipDropout = Float(value)
        default:
            throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "unknown value '\(name)'; this search has gate.NAME (the gate's values), regularizer.NAME, arch.lr, lr and skip_dropout")
        }
        values[name] = value
    }

    public func value(_ name: String) throws -> Double {
        switch name {
        case "arch.lr": return Double(archOptimizer.learningRate)
        case "lr": return Double(weightOptimizer.learningRate)
        case "skip_dropout": return Double(supernet.skipDropout)
        case "space.partial_channels": return Double(supernet.space.partialChannels)
        case "space.edge_normalization": return supernet.space.edgeNormalization ? 1 : 0
        case "space.cells": return Double(supernet.space.cells)
        case "space.hyper_connected": return supernet.space.hyperConnected ? 1 : 0
        case "space.classes": return Double(supernet.space.classes)
        case "batch": return Double(config.batchSize)
        default:
            guard let v = values[name] ?? published[name] else {
                throw SearchServiceError(status: ES_ERROR_UNSUPPORTED, message: "no value '\(name)' has been set; known: arch.lr, lr, batch, skip_dropout, space.partial_channels, space.edge_normalization, space.cells, space.classes, group_norm/TYPE/edgeE/OP (GSparsity), and gate.NAME / regularizer.NAME once set")
            }
            return v
        }
    }

    /// The predicted step peak of this run as it is now (its current depth, masked and removed
    /// candidates left out, its named values such as skip_dropout set) after `change` ({"cells": n, "batch": b, "channels": c}).
    public func predictPeak(change: String) throws -> StepPrediction {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(change.utf8)) as? [String: Any] else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "predict_peak: '\(change)' is not a JSON object")
        }
        var c = config
        c.space = supernet.space
        c.memoryBudget = accountant.budget ?? accountant.plannedBudget ?? config.memoryBudget
        for (k, v) in obj {
            guard let n = (v as? NSNumber)?.intValue, n > 0 else {
                throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "predict_peak: '\(k)' must be a positive integer")
            }
            switch k {
            case "cells": c.space = c.space.hyperConnected ? c.space.hyperGrown(to: n) : { var s = c.space; s.cells = n; return s }()
            case "batch": c.batchSize = n
            case "channels": c.space.channels = n
            case "nodes": c.space.nodes = n; c.space.multiplier = min(c.space.multiplier, n)
            default: throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "predict_peak: unknown change '\(k)'; known: cells, batch, channels, nodes")
            }
        }
        let ds = trainLoader.view.dataset
        // The live run's masked and removed candidates stay out of the prediction (same space shape only).
        return try SearchRun.predictStep(config: c, registry: registry, imageShape: (ds.channels, ds.height, ds.width), classes: ds.numClasses,
                                         opStates: supernet.hyperConnected ? nil : (opStates(reduction: false), opStates(reduction: true)),
                                         slotStates: supernet.hyperConnected ? (0..<supernet.slotCount).map { opStates(slot: $0) } : nil,
                                         inputStates: inputStatesByCell(), values: values, ranks: (ranks.rank, ranks.size))
    }
}

// MARK: - Ranks (ABI 1.4)

private func searchRanks(_ host: UnsafeMutableRawPointer?, _ rank: UnsafeMutablePointer<Int32>?, _ size: UnsafeMutablePointer<Int32>?) -> es_status {
    withSearch(host) { run, _ in
        rank?.pointee = Int32(run.ranks.rank)
        size?.pointee = Int32(run.ranks.size)
    }
}

private func searchSumOverRanks(_ host: UnsafeMutableRawPointer?, _ values: UnsafeMutablePointer<Double>?, _ count: Int64) -> es_status {
    withSearch(host) { run, _ in
        guard count >= 0, count <= 1 << 24, count == 0 || values != nil else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "sum_over_ranks: \(count) values at \(values == nil ? "NULL" : "a pointer"); give 0 to 2^24 values")
        }
        guard count > 0, let values else { return }
        try run.ranks.sum(UnsafeMutableBufferPointer(start: values, count: Int(count)))
    }
}
