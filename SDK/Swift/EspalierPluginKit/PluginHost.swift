// PluginHost: the host's services table (`es_host_services`) as Swift methods — logging, errors,
// randomness, parameters, accountant allocations, graph building and memory reports — plus
// SearchServices (`host->search`) for strategies. Failed host calls throw a PluginError that
// keeps the host's own message.

/// Log levels (`ES_LOG_*`).
public enum LogLevel: Int32, Sendable {
    case debug = 0, info = 1, warning = 2, error = 3
}

/// How `declareParam` fills a new parameter (`ES_INIT_*`).
public enum ParamInit: Sendable {
    case zeros
    case ones
    case constant(Double)
    /// N(0, std²).
    case normal(std: Double)
    /// U(−1/√fanIn, 1/√fanIn).
    case uniformFanIn(Int)

    var c: (es_init_kind, Double) {
        switch self {
        case .zeros: return (ES_INIT_ZEROS, 0)
        case .ones: return (ES_INIT_ONES, 1)
        case .constant(let v): return (ES_INIT_CONSTANT, v)
        case .normal(let std): return (ES_INIT_NORMAL, std)
        case .uniformFanIn(let n): return (ES_INIT_UNIFORM_FAN_IN, Double(n))
        }
    }
}

/// Flags of `declareParam` (`ES_PARAM_FLAG_*`).
public struct ParamFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Persistent state, not learnable (e.g. running statistics).
    public static let buffer = ParamFlags(rawValue: UInt32(ES_PARAM_FLAG_BUFFER))
    /// No weight decay.
    public static let noDecay = ParamFlags(rawValue: UInt32(ES_PARAM_FLAG_NO_DECAY))
    /// An architecture parameter, optimised by the architecture optimiser.
    public static let arch = ParamFlags(rawValue: UInt32(ES_PARAM_FLAG_ARCH))
}

/// The host's services (`const es_host_services *`), valid for the life of the process.
/// Call it only on the thread that called into the plugin, during that call.
public struct PluginHost: @unchecked Sendable {
    /// The C table.
    public let services: UnsafePointer<es_host_services>

    /// The size of ABI 1.0's table: everything up to `search`. A host of an older minor hands a
    /// smaller table than this kit's; later fields are read only when `struct_size` covers them.
    static let sizeV1_0 = MemoryLayout<es_host_services>.offset(of: \es_host_services.channel_width)!

    /// Wraps a table; nil if it is NULL or smaller than ABI 1.0's.
    public init?(_ services: UnsafePointer<es_host_services>?) {
        guard let services,
              Int(UnsafeRawPointer(services).load(as: UInt32.self)) >= PluginHost.sizeV1_0 else { return nil }
        self.services = services
    }

    /// The table's declared size (the host's `sizeof`).
    public var structSize: Int { Int(UnsafeRawPointer(services).load(as: UInt32.self)) }

    private var context: UnsafeMutableRawPointer? { services.pointee.host }

    private func missing(_ name: String) -> PluginError {
        PluginError.unsupported("the host provides no '\(name)' service")
    }

    private func check(_ status: es_status, _ name: String) throws {
        guard status == ES_OK else {
            throw PluginError(status, "host service '\(name)' failed", reportedByHost: true)
        }
    }

    // MARK: Diagnostics

    /// Logs a line.
    public func log(_ message: String, level: LogLevel = .info) {
        guard let fn = services.pointee.log else { return }
        message.withCString { fn(context, level.rawValue, $0) }
    }

    /// Sets the message reported with the error code about to be returned. Thunks do this for
    /// thrown errors; call it only from hand-written C callbacks.
    public func setError(_ message: String) {
        guard let fn = services.pointee.set_error else { return }
        message.withCString { fn(context, $0) }
    }

    // MARK: Randomness from the run's seed

    /// A uniformly random 64-bit value.
    public func randomU64() throws -> UInt64 {
        guard let fn = services.pointee.random_u64 else { throw missing("random_u64") }
        return fn(context)
    }

    /// Uniform in [0, 1).
    public func randomUniform() throws -> Double {
        guard let fn = services.pointee.random_uniform else { throw missing("random_uniform") }
        return fn(context)
    }

    // MARK: Memory through the accountant

    /// Allocates `bytes` (64-byte aligned) under `category` and `owner` (relative to the
    /// component's owner; nil = the component's). In a dry run the result is a token that must
    /// not be dereferenced. Free with `free`.
    public func allocate(bytes: Int, category: MemoryCategory, owner: String? = nil) throws -> UnsafeMutableRawPointer {
        guard let fn = services.pointee.alloc else { throw missing("alloc") }
        guard bytes >= 0 else { throw PluginError.invalidArgument("allocate: negative size \(bytes)") }
        let p: UnsafeMutableRawPointer?
        if let owner {
            p = owner.withCString { fn(context, UInt64(bytes), category.rawValue, $0) }
        } else {
            p = fn(context, UInt64(bytes), category.rawValue, nil)
        }
        guard let p else { throw PluginError(ES_ERROR_BUDGET, "host service 'alloc' refused \(bytes) bytes", reportedByHost: true) }
        return p
    }

    /// Frees what `allocate` returned (nil is ignored).
    public func free(_ pointer: UnsafeMutableRawPointer?) {
        guard let pointer, let fn = services.pointee.free else { return }
        fn(context, pointer)
    }

    // MARK: Parameters (from `init(host:…)` of a component)

    /// Declares a parameter of the instance being created, owned and counted by the host.
    public func declareParam(_ name: String, shape: [Int], initializer: ParamInit = .zeros,
                             flags: ParamFlags = []) throws -> es_param {
        guard let fn = services.pointee.declare_param else { throw missing("declare_param") }
        guard shape.count <= Int(ESPALIER_MAX_RANK), shape.allSatisfy({ $0 >= 0 }) else {
            throw PluginError.invalidArgument("declareParam '\(name)': bad shape \(shape)")
        }
        let dims = shape.map { Int64($0) }
        let (kind, value) = initializer.c
        var out: es_param? = nil
        let status = name.withCString { n in
            dims.withUnsafeBufferPointer { fn(context, n, $0.baseAddress, Int32(dims.count), kind, value, flags.rawValue, &out) }
        }
        try check(status, "declare_param(\(name))")
        guard let out else { throw PluginError.internalError("host service 'declare_param(\(name))' returned no handle") }
        return out
    }

    /// ABI 1.6, from `init(host:…)` only, once per channel mask before declaring it: how wide to
    /// build what the mask `mask` (its logits' name) gates, `channels` wide in the searched op.
    /// `searched` true: declare the logits and apply them with `channelMask`; false (a network
    /// built from a search's export): build at `width` and declare and apply no mask. A host older
    /// than 1.6 always answers (channels, true).
    public func channelWidth(_ mask: String, channels: Int) throws -> (width: Int, searched: Bool) {
        guard structSize >= MemoryLayout<es_host_services>.offset(of: \es_host_services.channel_width)! + MemoryLayout<UnsafeRawPointer>.size,
              let fn = services.pointee.channel_width else { return (channels, true) }
        var width: Int64 = 0, searched: Int32 = 0
        try check(mask.withCString { fn(context, $0, Int64(channels), &width, &searched) }, "channel_width(\(mask))")
        return (Int(width), searched != 0)
    }

    /// Views of a parameter's value and gradient (the gradient has no data for buffers and
    /// frozen parameters). Valid during the current call.
    public func paramView(_ param: es_param) throws -> (value: TensorView, grad: TensorView) {
        guard let fn = services.pointee.param_view else { throw missing("param_view") }
        var value = es_tensor_view(), grad = es_tensor_view()
        value.struct_size = UInt32(MemoryLayout<es_tensor_view>.size)
        grad.struct_size = value.struct_size
        try check(fn(context, param, &value, &grad), "param_view")
        return (try TensorView(copying: value, "param value"), try TensorView(copying: grad, "param gradient"))
    }

    // MARK: Graph building (from a composed op's `build`)

    /// True if the host has `primitive` (ask before using one newer than ABI 1.0's set).
    public func hasPrimitive(_ primitive: String) -> Bool {
        guard let fn = services.pointee.has_primitive else { return false }
        return primitive.withCString { fn(context, $0) } != 0
    }

    /// Appends `primitive(inputs…)` to `graph` and returns the new value, e.g.
    /// `try host.apply(graph, "conv2d", [x, w], attrs: ["stride": 1, "padding": 1])`.
    /// Integer attributes are passed as exact doubles.
    public func apply(_ graph: es_graph, _ primitive: String, _ inputs: [es_value],
                      attrs: KeyValuePairs<String, Double> = [:]) throws -> es_value {
        guard let fn = services.pointee.graph_apply else { throw missing("graph_apply") }
        let names = attrs.map { allocateCString($0.key) }
        defer { for n in names { n.deallocate() } }
        let cAttrs = zip(names, attrs).map { es_attr(name: UnsafePointer($0.0), value: $0.1.value) }
        let cInputs: [es_value?] = inputs
        var out: es_value? = nil
        let status = primitive.withCString { prim in
            cInputs.withUnsafeBufferPointer { ins in
                cAttrs.withUnsafeBufferPointer { ats in
                    fn(context, graph, prim, ins.baseAddress, UInt32(ins.count), ats.baseAddress, UInt32(ats.count), &out)
                }
            }
        }
        try check(status, "graph_apply(\(primitive))")
        guard let out else { throw PluginError.internalError("host service 'graph_apply(\(primitive))' returned no value") }
        return out
    }

    /// ABI 1.6: `channel_mask(x, logits)`, x's channels scaled by the run's "channel" gate on the
    /// logits, the form of a channel mask the host reads from the op's IR (cost targets, export).
    public func channelMask(_ graph: es_graph, _ x: es_value, logits: es_param) throws -> es_value {
        try apply(graph, "channel_mask", [x, try param(graph, logits)])
    }

    /// A declared parameter as a value in `graph` (buffers become constants).
    public func param(_ graph: es_graph, _ param: es_param) throws -> es_value {
        guard let fn = services.pointee.graph_param else { throw missing("graph_param") }
        var out: es_value? = nil
        try check(fn(context, graph, param, &out), "graph_param")
        guard let out else { throw PluginError.internalError("host service 'graph_param' returned no value") }
        return out
    }

    /// A read-only view of a value's tensor (shape always; no data in a dry run).
    public func view(_ value: es_value) throws -> TensorView {
        guard let fn = services.pointee.value_view else { throw missing("value_view") }
        var v = es_tensor_view()
        v.struct_size = UInt32(MemoryLayout<es_tensor_view>.size)
        try check(fn(context, value, &v), "value_view")
        return try TensorView(copying: v, "value view")
    }

    // MARK: Memory reports

    /// Current and at-peak bytes of owners under `ownerPrefix` ("" = everything).
    public func memoryReport(ownerPrefix: String = "") throws -> MemoryReport {
        guard let fn = services.pointee.memory_report else { throw missing("memory_report") }
        var r = MemoryReport.emptyC()
        let status = ownerPrefix.withCString { fn(context, $0, &r) }
        try check(status, "memory_report")
        return MemoryReport(r)
    }

    // MARK: Search control

    /// The search services, or nil when no search runs.
    public var search: SearchServices? {
        guard let s = services.pointee.search else { return nil }
        return SearchServices(s, context: context)
    }
}

/// What a strategy can change during a search (`es_search_services`): valid during strategy calls.
public struct SearchServices: @unchecked Sendable {
    /// The C table.
    public let table: UnsafePointer<es_search_services>
    let context: UnsafeMutableRawPointer?

    /// The size of ABI 1.0's table: everything up to `train_child`. A host of an older minor hands
    /// a smaller table than this kit's; later fields are read only when `struct_size` covers them.
    static let sizeV1_0 = MemoryLayout<es_search_services>.offset(of: \es_search_services.batch_loss)!

    /// The table's declared size (the host's `sizeof`).
    public var structSize: Int { Int(UnsafeRawPointer(table).load(as: UInt32.self)) }

    init?(_ table: UnsafePointer<es_search_services>, context: UnsafeMutableRawPointer?) {
        guard Int(UnsafeRawPointer(table).load(as: UInt32.self)) >= SearchServices.sizeV1_0 else { return nil }
        self.table = table
        self.context = context
    }

    /// True if the host's table has the ABI 1.1 `batch_loss` service.
    public var hasBatchLoss: Bool {
        structSize >= MemoryLayout<es_search_services>.offset(of: \es_search_services.batch_loss)! + MemoryLayout<UnsafeRawPointer>.size
            && table.pointee.batch_loss != nil
    }

    /// True if the host's table has the ABI 1.2 inter-cell input services (hyper-connected spaces).
    public var hasInputServices: Bool {
        structSize >= MemoryLayout<es_search_services>.offset(of: \es_search_services.get_input_state)! + MemoryLayout<UnsafeRawPointer>.size
            && table.pointee.input_view != nil && table.pointee.set_input_state != nil && table.pointee.get_input_state != nil
    }

    /// True if the host's table has the ABI 1.4 rank services (a data-parallel search).
    public var hasRankServices: Bool {
        structSize >= MemoryLayout<es_search_services>.offset(of: \es_search_services.sum_over_ranks)! + MemoryLayout<UnsafeRawPointer>.size
            && table.pointee.ranks != nil && table.pointee.sum_over_ranks != nil
    }

    /// ABI 1.4: this process's rank and the rank count (0 and 1 in one process, and from a host
    /// older than 1.4).
    public func ranks() throws -> (rank: Int, worldSize: Int) {
        guard hasRankServices, let fn = table.pointee.ranks else { return (0, 1) }
        var r: Int32 = 0, n: Int32 = 1
        try check(fn(context, &r, &n), "ranks")
        return (Int(r), Int(n))
    }

    /// ABI 1.4: `values` summed over every rank (collective: every rank calls it with as many
    /// values at the same point). One process, or a host older than 1.4: the values themselves.
    public func sumOverRanks(_ values: [Double]) throws -> [Double] {
        guard hasRankServices, let fn = table.pointee.sum_over_ranks else { return values }
        var v = values
        try v.withUnsafeMutableBufferPointer { try check(fn(context, $0.baseAddress, Int64($0.count)), "sum_over_ranks") }
        return v
    }

    /// Op states (`ES_OP_*`).
    public enum OpState: Int32, Sendable {
        case active = 0, masked = 1, removed = 2
    }

    /// The search space's size now.
    public struct SpaceInfo: Sendable {
        public var cellTypes: Int, edges: Int, ops: Int, nodes: Int, cells: Int
        /// ABI 1.2: Bonsai-Net's hyper-connected space (cell type t is cell t; inter-cell inputs gated).
        public var hyperConnected = false
    }

    private func missing(_ name: String) -> PluginError { PluginError.unsupported("the host provides no search service '\(name)'") }
    private func check(_ status: es_status, _ name: String) throws {
        guard status == ES_OK else { throw PluginError(status, "search service '\(name)' failed", reportedByHost: true) }
    }

    /// Cell types, edges per cell, candidate ops per edge, nodes per cell, and cells now.
    public func spaceInfo() throws -> SpaceInfo {
        guard let fn = table.pointee.space_info else { throw missing("space_info") }
        var s = es_space_info()
        s.struct_size = UInt32(MemoryLayout<es_space_info>.size)
        try check(fn(context, &s), "space_info")
        return SpaceInfo(cellTypes: Int(s.cell_types), edges: Int(s.edges), ops: Int(s.ops), nodes: Int(s.nodes), cells: Int(s.cells),
                         hyperConnected: s.hyper_connected != 0)
    }

    /// ABI 1.2: cell `cell`'s inter-cell input logits (inputs, 1) and their gradient; writable.
    public func inputView(cell: Int) throws -> (logits: TensorView, grad: TensorView) {
        guard hasInputServices, let fn = table.pointee.input_view else { throw missing("input_view (ABI 1.2)") }
        var l = es_tensor_view(), g = es_tensor_view()
        l.struct_size = UInt32(MemoryLayout<es_tensor_view>.size)
        g.struct_size = l.struct_size
        try check(fn(context, Int32(cell), &l, &g), "input_view")
        return (try TensorView(copying: l, "input logits"), try TensorView(copying: g, "input gradient"))
    }

    /// ABI 1.2: masks, restores or removes inter-cell input `input` of `cell`.
    public func setInputState(cell: Int, input: Int, _ state: OpState) throws {
        guard hasInputServices, let fn = table.pointee.set_input_state else { throw missing("set_input_state (ABI 1.2)") }
        try check(fn(context, Int32(cell), Int32(input), state.rawValue), "set_input_state")
    }

    /// ABI 1.2: the state of inter-cell input `input` of `cell`.
    public func inputState(cell: Int, input: Int) throws -> OpState {
        guard hasInputServices, let fn = table.pointee.get_input_state else { throw missing("get_input_state (ABI 1.2)") }
        var s: es_op_state = 0
        try check(fn(context, Int32(cell), Int32(input), &s), "get_input_state")
        guard let state = OpState(rawValue: s) else { throw PluginError.internalError("get_input_state returned unknown state \(s)") }
        return state
    }

    /// The id of candidate op `index`, or nil if there is none.
    public func opName(_ index: Int) -> String? {
        guard let fn = table.pointee.op_name, let p = fn(context, Int32(truncatingIfNeeded: index)) else { return nil }
        return String(cString: p)
    }

    /// Architecture logits of a cell type, (edges, ops), and their gradient; writable.
    public func archView(cellType: Int) throws -> (logits: TensorView, grad: TensorView) {
        guard let fn = table.pointee.arch_view else { throw missing("arch_view") }
        var l = es_tensor_view(), g = es_tensor_view()
        l.struct_size = UInt32(MemoryLayout<es_tensor_view>.size)
        g.struct_size = l.struct_size
        try check(fn(context, Int32(cellType), &l, &g), "arch_view")
        return (try TensorView(copying: l, "arch logits"), try TensorView(copying: g, "arch gradient"))
    }

    /// Masks, restores or removes op `op` on `edge` of every cell of `cellType`.
    public func setOpState(cellType: Int, edge: Int, op: Int, _ state: OpState) throws {
        guard let fn = table.pointee.set_op_state else { throw missing("set_op_state") }
        try check(fn(context, Int32(cellType), Int32(edge), Int32(op), state.rawValue), "set_op_state")
    }

    /// The state of op `op` on `edge` of cells of `cellType`.
    public func opState(cellType: Int, edge: Int, op: Int) throws -> OpState {
        guard let fn = table.pointee.get_op_state else { throw missing("get_op_state") }
        var s: es_op_state = 0
        try check(fn(context, Int32(cellType), Int32(edge), Int32(op), &s), "get_op_state")
        guard let state = OpState(rawValue: s) else { throw PluginError.internalError("get_op_state returned unknown state \(s)") }
        return state
    }

    /// Sets a named scalar of the run's components ("gate.tau", "regularizer.lambda", …).
    public func setValue(_ name: String, _ value: Double) throws {
        guard let fn = table.pointee.set_value else { throw missing("set_value") }
        try check(name.withCString { fn(context, $0, value) }, "set_value(\(name))")
    }

    /// Reads a named scalar of the run's components.
    public func value(_ name: String) throws -> Double {
        guard let fn = table.pointee.get_value else { throw missing("get_value") }
        var v = 0.0
        try check(name.withCString { fn(context, $0, &v) }, "get_value(\(name))")
        return v
    }

    /// Adds `cells` cells (a section), or sets the cell count (progressive stages).
    public func grow(cells: Int) throws {
        guard let fn = table.pointee.grow else { throw missing("grow") }
        try check(fn(context, Int32(cells)), "grow")
    }

    /// The predicted peak of one step after `change` (JSON, e.g. {"cells":11}; "{}" = as now).
    public func predictPeak(change: String = "{}") throws -> MemoryReport {
        guard let fn = table.pointee.predict_peak else { throw missing("predict_peak") }
        var r = MemoryReport.emptyC()
        try check(change.withCString { fn(context, $0, &r) }, "predict_peak")
        return MemoryReport(r)
    }

    /// Forward only on `batches` training batches with weights re-initialised from `initSeed`;
    /// `logits` receives (batches·batch, classes), as the host's `forward_logits` documents.
    public func forwardLogits(batches: Int, initSeed: UInt64, into logits: UnsafeMutablePointer<es_tensor_view>) throws {
        guard let fn = table.pointee.forward_logits else { throw missing("forward_logits") }
        try check(fn(context, Int32(batches), initSeed, logits), "forward_logits")
    }

    /// Trains the child architecture `arch` (genotype JSON) for `steps` steps; its validation accuracy.
    public func trainChild(arch: String, steps: Int) throws -> Double {
        guard let fn = table.pointee.train_child else { throw missing("train_child") }
        var acc = 0.0
        try check(arch.withCString { fn(context, $0, Int64(steps), &acc) }, "train_child")
        return acc
    }

    /// Which of the current step's batches `batchLoss` scores.
    public enum StepBatch: Int32, Sendable {
        case train = 0, validation = 1
    }

    /// ABI 1.1: the mean cross-entropy of the supernet in its current op states on one of the
    /// step's batches, and the batch size N (N·loss = the batch's negative log-likelihood).
    /// `backward` also accumulates ∂L/∂weights into the weight gradients. Call from `planStep` or
    /// `afterStep`; throws `unsupported` on a host older than ABI 1.1.
    public func batchLoss(_ batch: StepBatch, backward: Bool = false) throws -> (loss: Double, samples: Int) {
        guard hasBatchLoss, let fn = table.pointee.batch_loss else { throw missing("batch_loss (ABI 1.1)") }
        var loss = 0.0
        var samples: Int64 = 0
        try check(fn(context, batch.rawValue, backward ? 1 : 0, &loss, &samples), "batch_loss")
        return (loss, Int(samples))
    }
}
