// The search services (`host->search` in espalier_strategy.h) as the host sees them: a Swift
// protocol that whoever runs a search implements (EspalierSearch's `SearchServices`), and the one
// C table whose thunks call through it. Each thunk finds the provider through the table's `host`
// (the HostContext, whose `searchServices` is the provider), checks the plugin's pointers and
// never lets a Swift error cross into the plugin. What each service means for a search (which
// cell types exist, what a named value does) is the provider's; this file only translates.

import CEspalierSDK
import EspalierCore
import Foundation

/// What a strategy plugin acts through while a search runs: the space and its architecture
/// parameters, op and input states, named values (set and published), memory predictions,
/// forward logits on re-initialised weights, child training, step-batch losses, growth and the
/// ranks. Host thread only. A method's error becomes the plugin's status and the context's last
/// error: `SearchServiceError` its own status, `MemoryBudgetExceeded` ES_ERROR_BUDGET, any other
/// ES_ERROR_INVALID_ARGUMENT.
public protocol SearchServiceProvider: AnyObject {
    /// `space_info`: the shape of the space being searched.
    func spaceInfo() throws -> es_space_info
    /// `op_name`: candidate op `index`'s id as a C string valid for the process.
    func opName(_ index: Int) throws -> UnsafePointer<CChar>
    /// `arch_view`: the architecture logits of a cell type, (edges, ops).
    func archParameter(cellType: Int) throws -> Parameter
    /// `set_op_state` / `get_op_state`: a candidate's state in every cell of a cell type.
    func setOpState(cellType: Int, edge: Int, op: Int, _ state: es_op_state) throws
    func opState(cellType: Int, edge: Int, op: Int) throws -> es_op_state
    /// `input_view`: the inter-cell input logits of a cell (hyper-connected spaces).
    func inputParameter(cell: Int) throws -> Parameter
    /// `set_input_state` / `get_input_state`: an inter-cell input's state.
    func setInputState(cell: Int, input: Int, _ state: es_op_state) throws
    func inputState(cell: Int, input: Int) throws -> es_op_state
    /// `set_value` / `get_value`: named scalars, set by the strategy or published by the host.
    func setValue(_ name: String, _ value: Double) throws
    func value(_ name: String) throws -> Double
    /// `grow`: rebuilds the network at `cells` cells.
    func grow(cells: Int) throws
    /// `predict_peak`: the predicted step peak after `change` (JSON: cells, batch, channels, nodes).
    func memoryReport(change: String) throws -> es_memory_report
    /// `forward_logits`: logits of `batches` batches with weights re-initialised from `seed`.
    func forwardLogits(batches: Int32, seed: UInt64, view: UnsafeMutablePointer<es_tensor_view>) throws
    /// `train_child`: the validation accuracy of a genotype (JSON) trained for `steps` steps.
    func trainChild(architecture json: String, steps: Int) throws -> Double
    /// `batch_loss`: the loss on the step's training or validation batch, and its global size.
    func batchLoss(validation: Bool, backward: Bool) throws -> (loss: Double, samples: Int)
    /// `ranks` / `sum_over_ranks`: the processes the search runs on.
    var ranks: Communicator { get }
}

/// A search service's failure: the status the plugin gets and the message of the context's last error.
public struct SearchServiceError: Error {
    public let status: es_status
    public let message: String
    public init(status: es_status, message: String) { self.status = status; self.message = message }
}

public enum SearchServicesTable {
    /// One table for every search (plugins may keep the pointer); the provider is found through `host`.
    public static let table: UnsafeMutablePointer<es_search_services> = {
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

/// Runs `body` with the search services of `host`; errors become a status and the context's message.
private func withSearch(_ host: UnsafeMutableRawPointer?, _ body: (any SearchServiceProvider) throws -> Void) -> es_status {
    withContext(host) { ctx in
        guard let search = ctx.searchServices else { throw HostCallError(ES_ERROR_UNSUPPORTED, "no search is running") }
        do { try body(search) } catch let e as SearchServiceError { throw HostCallError(e.status, e.message) }
    }
}

private func invalid(_ message: String) -> SearchServiceError { SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: message) }

private let searchSpaceInfo: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<es_space_info>?) -> es_status = { host, out in
    withSearch(host) { search in
        guard let out else { throw invalid("space_info needs an out pointer") }
        // No more than the caller's struct holds: a plugin built for ABI 1.0 or 1.1 has no
        // hyper_connected. struct_size 0 (never set) is read as the 1.0 layout.
        let oldest = MemoryLayout<es_space_info>.offset(of: \es_space_info.hyper_connected)!, full = MemoryLayout<es_space_info>.size
        let given = Int(out.pointee.struct_size)
        guard given == 0 || given >= oldest else {
            throw invalid("space_info: struct_size \(given) is smaller than any es_space_info (\(oldest) bytes); set it to sizeof(es_space_info)")
        }
        var info = try search.spaceInfo()
        let n = given == 0 ? oldest : min(given, full)
        info.struct_size = UInt32(n)
        withUnsafeBytes(of: &info) { UnsafeMutableRawPointer(out).copyMemory(from: $0.baseAddress!, byteCount: n) }
    }
}

private let searchOpName: @convention(c) (UnsafeMutableRawPointer?, Int32) -> UnsafePointer<CChar>? = { host, index in
    var name: UnsafePointer<CChar>? = nil
    _ = withSearch(host) { search in name = try search.opName(Int(index)) }
    return name
}

/// Writable views of a parameter's values and gradient (arch_view, input_view).
private func view(_ p: Parameter, _ logits: UnsafeMutablePointer<es_tensor_view>?, _ grad: UnsafeMutablePointer<es_tensor_view>?) throws {
    logits?.pointee = p.value.view
    if let grad { grad.pointee = try p.ensureGrad().view }
}

private let searchArchView: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafeMutablePointer<es_tensor_view>?, UnsafeMutablePointer<es_tensor_view>?) -> es_status = {
    host, type, logits, grad in
    withSearch(host) { search in try view(try search.archParameter(cellType: Int(type)), logits, grad) }
}

private let searchSetOpState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, Int32, es_op_state) -> es_status = { host, type, edge, op, state in
    withSearch(host) { search in try search.setOpState(cellType: Int(type), edge: Int(edge), op: Int(op), state) }
}

private let searchGetOpState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, Int32, UnsafeMutablePointer<es_op_state>?) -> es_status = { host, type, edge, op, out in
    withSearch(host) { search in
        guard let out else { throw invalid("get_op_state: edge \(edge) / op \(op) outside the space, or no out pointer") }
        out.pointee = try search.opState(cellType: Int(type), edge: Int(edge), op: Int(op))
    }
}

private let searchInputView: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafeMutablePointer<es_tensor_view>?, UnsafeMutablePointer<es_tensor_view>?) -> es_status = {
    host, cell, logits, grad in
    withSearch(host) { search in try view(try search.inputParameter(cell: Int(cell)), logits, grad) }
}

private let searchSetInputState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, es_op_state) -> es_status = { host, cell, input, state in
    withSearch(host) { search in try search.setInputState(cell: Int(cell), input: Int(input), state) }
}

private let searchGetInputState: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, UnsafeMutablePointer<es_op_state>?) -> es_status = { host, cell, input, out in
    withSearch(host) { search in
        guard let out else { throw invalid("get_input_state needs an out pointer") }
        out.pointee = try search.inputState(cell: Int(cell), input: Int(input))
    }
}

private let searchSetValue: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Double) -> es_status = { host, name, value in
    withSearch(host) { search in
        guard let name else { throw invalid("set_value needs a name") }
        try search.setValue(String(cString: name), value)
    }
}

private let searchGetValue: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<Double>?) -> es_status = { host, name, out in
    withSearch(host) { search in
        guard let name, let out else { throw invalid("get_value needs a name and an out pointer") }
        out.pointee = try search.value(String(cString: name))
    }
}

private let searchGrow: @convention(c) (UnsafeMutableRawPointer?, Int32) -> es_status = { host, cells in
    withSearch(host) { search in try search.grow(cells: Int(cells)) }
}

private let searchPredictPeak: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<es_memory_report>?) -> es_status = { host, change, out in
    withSearch(host) { search in
        guard let out else { throw invalid("predict_peak needs an out pointer") }
        out.pointee = try search.memoryReport(change: change.map { String(cString: $0) } ?? "{}")
    }
}

private let searchForwardLogits: @convention(c) (UnsafeMutableRawPointer?, Int32, UInt64, UnsafeMutablePointer<es_tensor_view>?) -> es_status = {
    host, batches, seed, logits in
    withSearch(host) { search in
        guard let logits else { throw invalid("forward_logits needs a logits view") }
        try search.forwardLogits(batches: batches, seed: seed, view: logits)
    }
}

private let searchTrainChild: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Int64, UnsafeMutablePointer<Double>?) -> es_status = {
    host, arch, steps, out in
    withSearch(host) { search in
        guard let arch, let out else { throw invalid("train_child needs an architecture (genotype JSON) and an out pointer") }
        out.pointee = try search.trainChild(architecture: String(cString: arch), steps: Int(steps))
    }
}

/// ABI 1.1: the loss of the supernet in its current op states on one of the step's batches.
private let searchBatchLoss: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32, UnsafeMutablePointer<Double>?, UnsafeMutablePointer<Int64>?) -> es_status = {
    host, which, backward, loss, samples in
    withSearch(host) { search in
        guard which == 0 || which == 1 else { throw invalid("batch_loss: which \(which); 0 is the step's training batch, 1 its validation batch") }
        guard let loss else { throw invalid("batch_loss needs a loss out pointer") }
        let r = try search.batchLoss(validation: which == 1, backward: backward != 0)
        loss.pointee = r.loss
        samples?.pointee = Int64(r.samples)
    }
}

// MARK: - Ranks (ABI 1.4)

private func searchRanks(_ host: UnsafeMutableRawPointer?, _ rank: UnsafeMutablePointer<Int32>?, _ size: UnsafeMutablePointer<Int32>?) -> es_status {
    withSearch(host) { search in
        rank?.pointee = Int32(search.ranks.rank)
        size?.pointee = Int32(search.ranks.size)
    }
}

private func searchSumOverRanks(_ host: UnsafeMutableRawPointer?, _ values: UnsafeMutablePointer<Double>?, _ count: Int64) -> es_status {
    withSearch(host) { search in
        guard count >= 0, count <= 1 << 24, count == 0 || values != nil else {
            throw invalid("sum_over_ranks: \(count) values at \(values == nil ? "NULL" : "a pointer"); give 0 to 2^24 values")
        }
        guard count > 0, let values else { return }
        try search.ranks.sum(UnsafeMutableBufferPointer(start: values, count: Int(count)))
    }
}
