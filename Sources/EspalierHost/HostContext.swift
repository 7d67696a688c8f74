// The host side of the services table: one `HostContext` owns one `es_host_services` (which
// plugins may keep for the life of the process), and answers its calls from C — logging,
// errors, accounted memory, the run's RNG, parameter declaration and views, graph building
// and memory reports. Every thunk is a non-capturing C function that finds the context through
// the table's `host` pointer; nothing Swift unwinds into the plugin.

import CEspalierSDK
import EspalierCore
import Foundation

/// A parameter declared by a plugin instance, as an opaque `es_param`.
final class ParamHandle {
    let parameter: Parameter
    let isBuffer: Bool
    init(parameter: Parameter, isBuffer: Bool) { self.parameter = parameter; self.isBuffer = isBuffer }
    var opaque: es_param { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }
    static func from(_ p: es_param?) -> ParamHandle? {
        p.map { Unmanaged<ParamHandle>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
    }
}

/// A graph being built by a composed op: values are indices into `values`; `recorder` traces the
/// build into the op's IR with the same numbering (OpIR.swift).
final class GraphBuild {
    let graph: Graph
    /// The op's owner path: its parameters' names below it are the IR's leaf names.
    let ownerPath: String
    /// A trace only (`PluginOp.ir`): a gate the run lacks stands in as a value of the logits' shape.
    let traceOnly: Bool
    /// nil: a value a fused unit has not computed (`pending`; OpIR+Fusion.swift).
    var values: [Variable?] = []
    var pending: [Int: PendingNode] = [:]
    /// Whether it runs the units it applies fused (OpIR+Fusion.swift).
    var fuses = false
    let recorder: OpIRRecorder
    /// The first primitive that failed in this build (an op must not continue past it).
    var failure: String?
    /// A forward without tape (PluginOp.accumulate): node `node`, the op's output and a batch norm
    /// in its first build on this shape, adds its output into the sink's target instead of storing it.
    var sink: (node: Int, sink: ForwardSink)?
    /// Whether that node took the sink (the op's output is then the target itself).
    var sinkTaken: Bool { sunkValue != nil }
    /// The value that node makes (it holds the target, not the output).
    private(set) var sunkValue: Int?
    /// The values whose view the plugin asked for in this build (`value_view`): an op that views its
    /// output gets no sink.
    var viewed: Set<Int> = []
    /// The sink, for the batch norm about to be recorded as the node it is for; else nil.
    func takeSink(for primitive: String) -> ForwardSink? {
        guard let s = sink, s.node == recorder.nodes.count, SeparableUnitRule.isBatchNormPrimitive(primitive) else { return nil }
        sunkValue = values.count   // the node's value, handed out next
        return s.sink
    }
    init(graph: Graph, ownerPath: String = "", traceOnly: Bool = false, trackKept: Bool = true) {
        self.graph = graph; self.ownerPath = ownerPath; self.traceOnly = traceOnly; recorder = OpIRRecorder(trackKept: trackKept)
    }
    var opaque: es_graph { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }
    private func handle(_ v: Variable) -> es_value { values.append(v); return OpaquePointer(bitPattern: values.count)! }
    /// A leaf of the IR (the input, the mixing weights, a parameter or buffer).
    func leaf(_ v: Variable, _ source: OpIR.Source) -> es_value { recorder.leaf(source, shape: v.shape); return handle(v) }
    /// A node of the IR: primitive applied to `inputs` (handles), giving `v`.
    func node(_ v: Variable, _ primitive: String, role: String? = nil, inputs: [es_value?], attributes: [String: Double] = [:],
              flops: Int, keptBytes: Int) throws -> es_value {
        let indices = try inputs.map { try index($0) }
        recorder.node(primitive, role: role, inputs: indices, attributes: attributes, output: v.value, flops: flops, keptBytes: keptBytes)
        return handle(v)
    }
    func index(_ h: es_value?) throws -> Int {
        guard let h, case let i = Int(bitPattern: UnsafeRawPointer(h)) - 1, i >= 0, i < values.count else {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "not a value of this graph")
        }
        return i
    }
    func value(_ h: es_value?) throws -> Variable { try materialize(try index(h)) }
}

struct HostCallError: Error {
    let status: es_status
    let message: String
    init(_ status: es_status, _ message: String) { self.status = status; self.message = message }
}

public final class HostContext {
    /// The table handed to plugins. Allocated once; never freed (plugins may keep it).
    public let services: UnsafeMutablePointer<es_host_services>
    /// Whether the default log sink prints plugins' debug lines (`--verbose`).
    nonisolated(unsafe) public static var verbose = false
    /// Where plugin log lines go (level, message); debug lines only with `verbose`.
    public var logSink: (Int32, String) -> Void = { level, message in
        guard level > ES_LOG_DEBUG || HostContext.verbose else { return }
        let tag = ["debug", "info", "warning", "error"][Int(max(0, min(3, level)))]
        FileHandle.standardError.write(Data("[plugin \(tag)] \(message)\n".utf8))
    }
    /// The run's accountant and randomness (replaced when a run starts).
    public var accountant: MemoryAccountant
    public var rng: RNG
    /// Parameters declared by `create` are made here.
    public var factory: ParameterFactory
    /// Gates the run selected per role ("channel", …), for `graph_gate`.
    public var gatesByRole: [String: PluginGate] = [:]
    /// Gates for roles whose logits may have any length (FiGS's per-channel masks, role "channel"):
    /// `graph_gate` with n logits uses `gatesByRole[role]` when it has n rows·cols, else one gate of
    /// n rows made by `gateMakersByRole[role](n)` and kept for the rest of the run.
    public var gateMakersByRole: [String: (Int) throws -> PluginGate] = [:] { didSet { gatesBySize = [:] } }
    private var gatesBySize: [String: [Int: PluginGate]] = [:]

    /// Selects `component` (a gate with ES_GATE_CHANNELS) for `role`, one instance per logits length.
    public func selectChannelGate(_ component: Component, role: String = "channel", settings: [String: String] = [:]) {
        gateMakersByRole[role] = { [unowned self] n in
            try PluginGate(component, context: self, granularity: .channels, rows: n, cols: 1, settings: settings,
                           ownerPath: "gate/\(role)/\(n)")
        }
    }

    /// The gate `graph_gate` uses for `count` logits of `role`, or nil if the run has none.
    func gate(role: String, count: Int) throws -> PluginGate? {
        if let g = gatesByRole[role], g.rows * g.cols == count { return g }
        guard let make = gateMakersByRole[role] else { return gatesByRole[role] }
        if let g = gatesBySize[role]?[count] { return g }
        let g = try make(count)
        gatesBySize[role, default: [:]][count] = g
        return g
    }
    /// Where the run is now: the state of a plugin call the caller gives none (the evaluation-mode
    /// mixing weights that are logged and derived from, `graph_gate`). A search points it at its
    /// own step and epoch; outside a run it is the zero state.
    public var runState: () -> RunState = { RunState() }
    /// The search services a strategy reaches through `host->search`, set while a search runs
    /// (weak: the search owns them). Setting them publishes the services table; nil withdraws it.
    public weak var searchServices: (any SearchServiceProvider)? {
        didSet { services.pointee.search = searchServices == nil ? nil : UnsafePointer(SearchServicesTable.table) }
    }

    private var lastError: String?
    var declaring: [ParamHandle]? = nil
    /// While an op is created: the widths its channel masks are built at (nil = as searched), and
    /// each mask the op asked about (`channel_width`) with its searched width.
    var creating: (exportedWidths: [String: Int]?, asked: [String: Int])? = nil
    private var allocations: [UnsafeMutableRawPointer: MemoryTicket] = [:]

    public init(accountant: MemoryAccountant = MemoryAccountant(), seed: UInt64 = 0) {
        self.accountant = accountant
        self.rng = RNG(seed: seed)
        self.factory = ParameterFactory(accountant: accountant, seed: seed &+ 1)
        // A table given back by a closed context is reused (plugins may still hold it; it stays valid).
        services = HostContext.closedTables.popLast() ?? .allocate(capacity: 1)
        UnsafeMutableRawPointer(services).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<es_host_services>.size)
        var s = es_host_services()
        s.struct_size = UInt32(MemoryLayout<es_host_services>.size)
        s.abi = es_version(major: UInt32(ESPALIER_ABI_MAJOR), minor: UInt32(ESPALIER_ABI_MINOR))
        s.host = nil
        s.log = hostLog
        s.set_error = hostSetError
        s.alloc = hostAlloc
        s.free = hostFree
        s.random_u64 = hostRandomU64
        s.random_uniform = hostRandomUniform
        s.declare_param = hostDeclareParam
        s.param_view = hostParamView
        s.has_primitive = hostHasPrimitive
        s.graph_apply = hostGraphApply
        s.graph_param = hostGraphParam
        s.value_view = hostValueView
        s.graph_gate = hostGraphGate
        s.memory_report = hostMemoryReport
        s.search = nil
        s.channel_width = hostChannelWidth
        services.pointee = s
        // The context lives as long as the table: plugins may hold either for the process's life.
        services.pointee.host = Unmanaged.passRetained(self).toOpaque()
    }

    /// Ends a context made for one run (a prediction's dry run): calls through its table fail from
    /// now on (its `host` is NULL), the gates it keeps go, and the retain that kept it alive for
    /// the table is given back, so the context and its accountant are freed once the run that uses
    /// it is. Its table is kept for the next context (a plugin may still hold the pointer).
    /// Call it only after every plugin instance made with it is destroyed or about to be.
    public func close() {
        guard let host = services.pointee.host else { return }
        services.pointee.host = nil
        services.pointee.search = nil
        gatesByRole = [:]
        gateMakersByRole = [:]
        Unmanaged<HostContext>.fromOpaque(host).release()
    }

    deinit {
        for (p, _) in allocations { free(p) }
        HostContext.closedTables.append(services)
    }

    /// Tables of closed contexts, reused by new ones (host thread only).
    private nonisolated(unsafe) static var closedTables: [UnsafeMutablePointer<es_host_services>] = []

    /// Points the context at a run's accountant and seed.
    public func begin(accountant: MemoryAccountant, seed: UInt64) {
        self.accountant = accountant
        self.rng = RNG(seed: seed)
        self.factory = ParameterFactory(accountant: accountant, seed: seed &+ 1)
    }

    // MARK: Errors

    public func setError(_ message: String) { lastError = message }
    func clearError() { lastError = nil }
    func takeError() -> String? { defer { lastError = nil }; return lastError }

    /// Runs a plugin call: clears the error slot, checks the status, and turns a failure into a
    /// Swift error carrying the plugin's message and what the host was doing.
    func check(_ what: @autoclosure () -> String, _ call: () -> es_status) throws {
        clearError()
        // A supervised worker records the call first, so its supervisor can name it if the call
        // crashes or hangs (CallRecorder.swift).
        let recorder = CallRecorder.active
        if let recorder {
            let st = runState()
            recorder.enter(what(), owner: accountant.currentOwnerPath, epoch: st.epoch, step: st.step)
        }
        let status = call()
        recorder?.leave()
        if status != ES_OK {
            throw PluginCallError(status: status, context: what(), message: takeError() ?? "no message")
        }
    }

    /// A plugin instance's state blob through its save_state (ABI 1.3; the two-call buffer
    /// convention of `derive`): nil when the component has no save_state, [] when it has nothing now.
    func savedState(_ who: String, _ fn: (@convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<UInt8>?, UInt64, UnsafeMutablePointer<UInt64>?) -> es_status)?,
                    _ instance: UnsafeMutableRawPointer?) throws -> [UInt8]? {
        guard let fn else { return nil }
        var capacity = 4096
        for _ in 0..<4 {
            var buffer = [UInt8](repeating: 0, count: capacity)
            var length: UInt64 = 0
            clearError()
            let status = buffer.withUnsafeMutableBufferPointer { fn(instance, $0.baseAddress, UInt64(capacity), &length) }
            if status == ES_OK {
                guard length <= UInt64(capacity) else {
                    throw PluginCallError(status: ES_ERROR_INTERNAL, context: "\(who): save_state", message: "reported \(length) bytes in a buffer of \(capacity)")
                }
                return Array(buffer.prefix(Int(length)))
            }
            if status == ES_ERROR_INVALID_ARGUMENT, length > UInt64(capacity), length < 1 << 40 { capacity = Int(length); continue }
            throw PluginCallError(status: status, context: "\(who): save_state", message: takeError() ?? "no message")
        }
        throw PluginCallError(status: ES_ERROR_INTERNAL, context: "\(who): save_state", message: "kept asking for a larger buffer")
    }

    /// Hands a blob back to a plugin instance's load_state; false when it has none (stateless).
    func loadState(_ who: String, _ fn: (@convention(c) (UnsafeMutableRawPointer?, UnsafePointer<UInt8>?, UInt64) -> es_status)?,
                   _ instance: UnsafeMutableRawPointer?, _ bytes: [UInt8]) throws -> Bool {
        guard let fn else { return false }
        try check("\(who): load_state") { bytes.withUnsafeBufferPointer { fn(instance, $0.baseAddress, UInt64(bytes.count)) } }
        return true
    }

    public static func from(_ host: UnsafeMutableRawPointer?) -> HostContext? {
        host.map { Unmanaged<HostContext>.fromOpaque($0).takeUnretainedValue() }
    }

    // MARK: Accounted allocations

    func allocate(bytes: UInt64, category: es_memory_category, owner: String?) throws -> UnsafeMutableRawPointer {
        guard let cat = MemoryCategory(rawValue: category) else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "unknown memory category \(category)") }
        guard bytes <= UInt64(Int.max / 2) else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "allocation of \(bytes) bytes is implausible") }
        let ownerID = owner.map { o in accountant.owner(accountant.currentOwnerPath.isEmpty ? o : accountant.currentOwnerPath + "/" + o) }
        let ticket: MemoryTicket
        do { ticket = try MemoryTicket(bytes: Int(bytes), category: cat, accountant: accountant, owner: ownerID) } catch let e as MemoryBudgetExceeded {
            throw HostCallError(ES_ERROR_BUDGET, e.description)
        }
        var raw: UnsafeMutableRawPointer?
        // A dry run still returns a unique non-NULL token (never to be dereferenced).
        let size = accountant.isDryRun ? 1 : max(Int(bytes), 1)
        guard posix_memalign(&raw, 64, size) == 0, let p = raw else { throw HostCallError(ES_ERROR_OUT_OF_MEMORY, "the system refused \(bytes) bytes") }
        allocations[p] = ticket
        return p
    }

    func release(_ p: UnsafeMutableRawPointer) {
        guard allocations.removeValue(forKey: p) != nil else {
            logSink(ES_LOG_WARNING, "free of a pointer the host did not allocate (\(p)); ignored")
            return
        }
        free(p)
    }
}

/// A plugin call that returned an error.
public struct PluginCallError: Error, CustomStringConvertible {
    public let status: es_status
    public let context: String
    public let message: String
    public var description: String { "\(context): \(statusName(status)): \(message)" }
}

// MARK: - Views

extension Tensor {
    /// A view for a plugin (data NULL in a dry run).
    public var view: es_tensor_view { esView(shape: shape, data: storage.data) }
}

public func esView(shape: [Int], data: UnsafeMutablePointer<Float>?) -> es_tensor_view {
    var v = es_tensor_view()
    v.struct_size = UInt32(MemoryLayout<es_tensor_view>.size)
    v.rank = Int32(shape.count)
    v.data = data
    withUnsafeMutableBytes(of: &v.shape) { raw in
        let s = raw.bindMemory(to: Int64.self)
        for (i, d) in shape.prefix(Int(ESPALIER_MAX_RANK)).enumerated() { s[i] = Int64(d) }
    }
    return v
}

extension es_tensor_view {
    public var shapeArray: [Int] {
        var v = self
        let rank = Int(max(0, min(rank, ESPALIER_MAX_RANK)))
        return withUnsafeBytes(of: &v.shape) { raw in (0..<rank).map { Int(raw.load(fromByteOffset: $0 * 8, as: Int64.self)) } }
    }
}

// MARK: - C thunks (non-capturing; the context comes from `host`)

/// Runs `body` with the context of `host`; errors become a status and the context's message.
func withContext(_ host: UnsafeMutableRawPointer?, _ body: (HostContext) throws -> Void) -> es_status {
    guard let ctx = HostContext.from(host) else { return ES_ERROR_INVALID_ARGUMENT }
    do { try body(ctx); return ES_OK } catch let e as HostCallError {
        ctx.setError(e.message); return e.status
    } catch let e as MemoryBudgetExceeded {
        ctx.setError(e.description); return ES_ERROR_BUDGET
    } catch {
        ctx.setError("\(error)"); return ES_ERROR_INVALID_ARGUMENT
    }
}

private let hostLog: @convention(c) (UnsafeMutableRawPointer?, es_log_level, UnsafePointer<CChar>?) -> Void = { host, level, message in
    guard let ctx = HostContext.from(host), let message else { return }
    ctx.logSink(level, String(cString: message))
}

private let hostSetError: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?) -> Void = { host, message in
    HostContext.from(host)?.setError(message.map { String(cString: $0) } ?? "(no message)")
}

private let hostAlloc: @convention(c) (UnsafeMutableRawPointer?, UInt64, es_memory_category, UnsafePointer<CChar>?) -> UnsafeMutableRawPointer? = { host, bytes, category, owner in
    var out: UnsafeMutableRawPointer? = nil
    _ = withContext(host) { ctx in out = try ctx.allocate(bytes: bytes, category: category, owner: owner.map { String(cString: $0) }) }
    return out
}

private let hostFree: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Void = { host, p in
    guard let ctx = HostContext.from(host), let p else { return }
    ctx.release(p)
}

private let hostRandomU64: @convention(c) (UnsafeMutableRawPointer?) -> UInt64 = { host in
    guard let ctx = HostContext.from(host) else { return 0 }
    return ctx.rng.next()
}

private let hostRandomUniform: @convention(c) (UnsafeMutableRawPointer?) -> Double = { host in
    guard let ctx = HostContext.from(host) else { return 0 }
    return ctx.rng.uniformDouble()
}

private let hostDeclareParam: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafePointer<Int64>?, Int32, es_init_kind, Double, UInt32, UnsafeMutablePointer<es_param?>?) -> es_status = {
    host, name, shape, rank, initKind, initValue, flags, out in
    withContext(host) { ctx in
        guard let name, let out, rank >= 0, rank <= ESPALIER_MAX_RANK, rank == 0 || shape != nil else {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "declare_param needs a name, a shape of rank 0…\(ESPALIER_MAX_RANK) and an out pointer")
        }
        guard ctx.declaring != nil else { throw HostCallError(ES_ERROR_UNSUPPORTED, "declare_param is only allowed inside an op's create (a gate, regularizer or strategy keeps its own state in its instance)") }
        let dims = (0..<Int(rank)).map { Int(shape![$0]) }
        if let problem = PluginShape.problem(dims, scalarAllowed: true) {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "declare_param '\(String(cString: name))': shape \(PluginShape.text(dims)) has \(problem)")
        }
        let initializer: ParameterInit
        switch initKind {
        case ES_INIT_ZEROS: initializer = .zeros
        case ES_INIT_ONES: initializer = .ones
        case ES_INIT_CONSTANT: initializer = .zeros
        case ES_INIT_NORMAL: initializer = .normal(std: Float(initValue))
        case ES_INIT_UNIFORM_FAN_IN: initializer = .uniformFanIn(Int(initValue))
        default: throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "declare_param: unknown init kind \(initKind)")
        }
        let isBuffer = flags & UInt32(ES_PARAM_FLAG_BUFFER) != 0
        let p = try ctx.factory.make(String(cString: name), dims, initializer, decay: flags & UInt32(ES_PARAM_FLAG_NO_DECAY) == 0)
        if initKind == ES_INIT_CONSTANT { p.value.fill(Float(initValue)) }
        p.requiresGrad = !isBuffer
        let handle = ParamHandle(parameter: p, isBuffer: isBuffer)
        ctx.declaring!.append(handle)
        out.pointee = handle.opaque
    }
}

private let hostParamView: @convention(c) (UnsafeMutableRawPointer?, es_param?, UnsafeMutablePointer<es_tensor_view>?, UnsafeMutablePointer<es_tensor_view>?) -> es_status = {
    host, param, value, grad in
    withContext(host) { _ in
        guard let h = ParamHandle.from(param) else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "param_view of a NULL parameter") }
        value?.pointee = h.parameter.value.view
        if let grad {
            if h.isBuffer || !h.parameter.requiresGrad { grad.pointee = esView(shape: h.parameter.shape, data: nil) }
            else { grad.pointee = try h.parameter.ensureGrad().view }
        }
    }
}

private let hostHasPrimitive: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?) -> Int32 = { _, name in
    guard let name else { return 0 }
    let n = String(cString: name)
    return Primitives.table[n] != nil || n == ChannelMaskPrimitive.name ? 1 : 0
}

private let hostChannelWidth: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Int64, UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Int32>?) -> es_status = {
    host, mask, channels, width, searched in
    withContext(host) { ctx in
        guard let mask, let width, let searched else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "channel_width needs a mask name and two out pointers") }
        let name = String(cString: mask)
        guard channels >= 1 else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "channel_width '\(name)': the searched width must be ≥ 1; got \(channels)") }
        guard var creating = ctx.creating else { throw HostCallError(ES_ERROR_UNSUPPORTED, "channel_width is only answered inside an op's create") }
        if let widths = creating.exportedWidths {
            guard let w = widths[name] else {
                throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "the exported network records no width for the channel mask '\(name)' of this op (it records "
                                    + (widths.isEmpty ? "none" : widths.keys.sorted().joined(separator: ", ")) + "); export the search again with this version of the op")
            }
            guard w >= 1, w <= channels else {
                throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "the exported width \(w) of the channel mask '\(name)' is outside 1…\(channels), the width the op asks for")
            }
            width.pointee = Int64(w)
            searched.pointee = 0
        } else {
            width.pointee = channels
            searched.pointee = 1
        }
        creating.asked[name] = Int(channels)
        ctx.creating = creating
    }
}

private let hostGraphApply: @convention(c) (UnsafeMutableRawPointer?, es_graph?, UnsafePointer<CChar>?, UnsafePointer<es_value?>?, UInt32, UnsafePointer<es_attr>?, UInt32, UnsafeMutablePointer<es_value?>?) -> es_status = {
    host, graph, primitive, inputs, inputCount, attrs, attrCount, out in
    withContext(host) { ctx in
        guard let graph, let primitive, let out else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "graph_apply needs a graph, a primitive name and an out pointer") }
        let build = Unmanaged<GraphBuild>.fromOpaque(UnsafeRawPointer(graph)).takeUnretainedValue()
        let name = String(cString: primitive)
        guard inputCount == 0 || inputs != nil, attrCount == 0 || attrs != nil else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "\(name): NULL inputs or attrs") }
        var a: [String: Double] = [:]
        for i in 0..<Int(attrCount) {
            guard let n = attrs![i].name else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "\(name): attribute #\(i) has no name") }
            a[String(cString: n)] = attrs![i].value
        }
        let handles = (0..<Int(inputCount)).map { inputs![$0] }
        do {
            if build.fuses, let fused = try build.applyFused(name, inputs: handles, attributes: a) {
                out.pointee = fused
                return
            }
            if name == ChannelMaskPrimitive.name {
                out.pointee = try ChannelMaskPrimitive.apply(ctx, build, inputs: handles, attributes: a)
                return
            }
            let xs = try handles.map { try build.value($0) }
            let before = build.graph.accountant.currentTotal
            let y = try Primitives.apply(name, build.graph, xs, a, sink: build.takeSink(for: name))
            let flops = try Primitives.flops(name, xs.map(\.shape), y.shape, a, training: build.graph.training)
            out.pointee = try build.node(y, name, inputs: handles, attributes: a, flops: flops,
                                         keptBytes: build.graph.accountant.currentTotal - before)
        } catch let e as EspalierError {
            build.failure = build.failure ?? "\(name): \(e)"
            throw HostCallError(ES_ERROR_SHAPE, "\(name): \(e)")
        } catch let e as HostCallError {
            // Kept, so that the op's build fails with it even if the plugin ignores the status.
            build.failure = build.failure ?? e.message
            throw e
        }
    }
}

private let hostGraphParam: @convention(c) (UnsafeMutableRawPointer?, es_graph?, es_param?, UnsafeMutablePointer<es_value?>?) -> es_status = {
    host, graph, param, out in
    withContext(host) { _ in
        guard let graph, let h = ParamHandle.from(param), let out else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "graph_param needs a graph, a parameter and an out pointer") }
        let build = Unmanaged<GraphBuild>.fromOpaque(UnsafeRawPointer(graph)).takeUnretainedValue()
        let v = h.isBuffer ? build.graph.constant(h.parameter.value) : build.graph.param(h.parameter)
        let prefix = build.ownerPath + "/"
        let name = h.parameter.name.hasPrefix(prefix) ? String(h.parameter.name.dropFirst(prefix.count)) : h.parameter.name
        out.pointee = build.leaf(v, h.isBuffer ? .buffer(name) : .parameter(name))
    }
}

private let hostValueView: @convention(c) (UnsafeMutableRawPointer?, es_value?, UnsafeMutablePointer<es_tensor_view>?) -> es_status = { host, value, out in
    withContext(host) { _ in
        // Values are only meaningful with their graph; the view is looked up in the live build.
        guard let out, let value, let build = GraphBuild.current else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "value_view outside a build") }
        let i = try build.index(value)
        build.viewed.insert(i)
        if i == build.sunkValue {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "value_view of the op's last batch norm output, which this forward without tape added into "
                                + "its node's sum instead of storing it; an op that views its output in its first build on a shape gets it stored")
        }
        out.pointee = try build.value(value).value.view
    }
}

private let hostGraphGate: @convention(c) (UnsafeMutableRawPointer?, es_graph?, UnsafePointer<CChar>?, es_value?, UnsafeMutablePointer<es_value?>?) -> es_status = {
    host, graph, role, logits, out in
    withContext(host) { ctx in
        guard let graph, let role, let out else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "graph_gate needs a graph, a role and an out pointer") }
        let build = Unmanaged<GraphBuild>.fromOpaque(UnsafeRawPointer(graph)).takeUnretainedValue()
        let name = String(cString: role)
        let before = build.graph.accountant.currentTotal, flopsBefore = build.graph.flops
        let w = try ctx.gateWeights(build, role: name, logits: try build.value(logits))
        out.pointee = try build.node(w, "gate", role: name, inputs: [logits], flops: build.graph.flops - flopsBefore,
                                     keptBytes: build.graph.accountant.currentTotal - before)
    }
}

extension HostContext {
    /// The run's gate for `role` applied to `l` in `build`, as weights in the logits' own shape. In
    /// a trace only, a gate the run lacks stands in as a value of the logits' shape.
    func gateWeights(_ build: GraphBuild, role: String, logits l: Variable) throws -> Variable {
        guard let gate = try gate(role: role, count: l.value.count) else {
            if build.traceOnly { return build.graph.constant(try Tensor(shape: l.shape, category: .activations, accountant: build.graph.accountant)) }
            let roles = Set(gatesByRole.keys).union(gateMakersByRole.keys).sorted()
            throw HostCallError(ES_ERROR_UNSUPPORTED, "this run has no gate for role '\(role)'" + (roles.isEmpty ? "" : "; roles: \(roles.joined(separator: ", "))"))
        }
        // The gate's (rows, cols) weights in the logits' own shape.
        let w = try gate(build.graph, l).weights
        return w.shape == l.shape ? w : try build.graph.reshape(w, l.shape)
    }
}

/// `channel_mask(x, logits)` (ABI 1.6): x's channels scaled by the run's "channel" gate on the
/// logits, recorded in the op's IR as one node, the one form of a channel mask the host reads
/// (OpIR+ChannelMasks.swift).
enum ChannelMaskPrimitive {
    static let name = "channel_mask"
    static let role = "channel"

    static func apply(_ ctx: HostContext, _ build: GraphBuild, inputs: [es_value?], attributes: [String: Double]) throws -> es_value {
        guard inputs.count == 2 else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "channel_mask takes (x, logits); got \(inputs.count) inputs") }
        guard attributes.isEmpty else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "channel_mask takes no attributes; got \(attributes.keys.sorted().joined(separator: ", "))") }
        let x = try build.value(inputs[0]), l = try build.value(inputs[1])
        guard x.shape.count >= 2, l.value.count == x.shape[1] else {
            throw HostCallError(ES_ERROR_SHAPE, "channel_mask: the logits have \(l.value.count) values for x of shape \(PluginShape.text(x.shape)); give one per channel (\(x.shape.count >= 2 ? x.shape[1] : 0))")
        }
        let before = build.graph.accountant.currentTotal, flopsBefore = build.graph.flops
        let m = try ctx.gateWeights(build, role: role, logits: l)
        let y = try Primitives.apply("channel_scale", build.graph, [x, m.shape == [x.shape[1]] ? m : try build.graph.reshape(m, [x.shape[1]])], [:])
        return try build.node(y, name, inputs: inputs, flops: build.graph.flops - flopsBefore,
                              keptBytes: build.graph.accountant.currentTotal - before)
    }
}

private let hostMemoryReport: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<es_memory_report>?) -> es_status = { host, prefix, out in
    withContext(host) { ctx in
        guard let out else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "memory_report needs an out pointer") }
        let p = prefix.map { String(cString: $0) } ?? ""
        let cur = ctx.accountant.currentBytes(ownerPrefix: p), peak = ctx.accountant.peakBytes(ownerPrefix: p)
        var r = es_memory_report()
        r.struct_size = UInt32(MemoryLayout<es_memory_report>.size)
        withUnsafeMutableBytes(of: &r.current) { raw in for c in 0..<Int(ES_MEM_CATEGORY_COUNT) { raw.storeBytes(of: UInt64(cur.bytes[c]), toByteOffset: c * 8, as: UInt64.self) } }
        withUnsafeMutableBytes(of: &r.at_peak) { raw in for c in 0..<Int(ES_MEM_CATEGORY_COUNT) { raw.storeBytes(of: UInt64(peak.bytes[c]), toByteOffset: c * 8, as: UInt64.self) } }
        r.current_total = UInt64(cur.total)
        r.peak_total = UInt64(peak.total)
        r.budget = UInt64(ctx.accountant.budget ?? ctx.accountant.plannedBudget ?? 0)
        out.pointee = r
    }
}

extension GraphBuild {
    /// The build in progress (builds do not nest across threads: host thread only).
    nonisolated(unsafe) static var current: GraphBuild?
}
