// Gates in Swift: the `GateComponent` protocol, its config and flags, `Component.gate(…)`, and
// the C thunks of `es_gate_vtable` shared by every Swift gate. The thunks check every view
// (NULL, shapes equal to logits, logits count = rows·cols) before the component sees it.

/// A gate's granularity (`ES_GATE_*`): what its rows are.
public enum GateGranularity: Int32, Sendable {
    /// rows = edges, cols = candidate ops.
    case ops = 1
    /// rows = channels, cols = 1.
    case channels = 2
    /// rows = connections, cols = 1.
    case inputs = 3
}

/// The granularities a gate supports (`es_gate_vtable.granularities`).
public struct GateGranularities: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ops = GateGranularities(rawValue: 1 << UInt32(ES_GATE_OPS))
    public static let channels = GateGranularities(rawValue: 1 << UInt32(ES_GATE_CHANNELS))
    public static let inputs = GateGranularities(rawValue: 1 << UInt32(ES_GATE_INPUTS))
}

/// Gate flags (`ES_GATE_*`).
public struct GateFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Random: weights differ between calls.
    public static let sampled = GateFlags(rawValue: UInt32(ES_GATE_SAMPLED))
    /// May set `active[i] = 0`.
    public static let hard = GateFlags(rawValue: UInt32(ES_GATE_HARD))
}

/// Where a gate instance sits (`es_gate_config`).
public struct GateConfig: Sendable {
    /// What the rows are.
    public var granularity: GateGranularity
    /// Rows of the logits matrix (edges, channels or connections).
    public var rows: Int
    /// Columns (candidate ops; 1 for channels and inputs).
    public var cols: Int
    /// The owner path, e.g. "arch/normal".
    public var owner: String

    public init(granularity: GateGranularity, rows: Int, cols: Int, owner: String) {
        self.granularity = granularity; self.rows = rows; self.cols = cols; self.owner = owner
    }

    init(_ pointer: UnsafePointer<es_gate_config>?) throws {
        guard let pointer else { throw PluginError.invalidArgument("gate config is NULL") }
        try checkStructSize(UnsafeRawPointer(pointer), es_gate_config.self, "gate config")
        let c = pointer.pointee
        guard let g = GateGranularity(rawValue: c.granularity) else {
            throw PluginError.invalidArgument("gate config: unknown granularity \(c.granularity)")
        }
        guard c.rows >= 0, c.cols >= 0, let rows = Int(exactly: c.rows), let cols = Int(exactly: c.cols),
              !rows.multipliedReportingOverflow(by: cols).overflow else {
            throw PluginError.shape("gate config: bad size \(c.rows)×\(c.cols)")
        }
        self.init(granularity: g, rows: rows, cols: cols, owner: stringOrEmpty(c.owner))
    }
}

/// A gate: architecture logits (rows, cols) → mixing weights or masks of the same shape.
///
/// Called on the host thread, one call at a time per instance. Views are valid during the call;
/// in a dry run (`state.isDryRun`, views without data) compute nothing but allocate as usual.
public protocol GateComponent: AnyObject {
    /// Makes an instance; throw `PluginError.invalidArgument` for bad parameters.
    init(host: PluginHost, config: GateConfig, params: ParamValues) throws

    /// weights = gate(logits). If `active` is non-nil (rows·cols bytes), write 1 where the
    /// candidate must run, 0 where its weight is exactly 0 and it may be skipped.
    func forward(state: RunState, logits: TensorView, weights: TensorView, active: UnsafeMutableBufferPointer<UInt8>?) throws

    /// ADDS ∂L/∂logits into `dLogits`, given ∂L/∂weights and the weights forward wrote.
    func backward(state: RunState, logits: TensorView, weights: TensorView, dWeights: TensorView, dLogits: TensorView) throws

    /// Sets a named scalar (e.g. "tau"). Default: throws `ES_ERROR_UNSUPPORTED`.
    func setValue(_ name: String, _ value: Double) throws
}

extension GateComponent {
    public func setValue(_ name: String, _ value: Double) throws {
        throw PluginError.unsupported("this gate has no settable value '\(name)'")
    }
}

final class GateFactory: ComponentFactory {
    let make: (PluginHost, GateConfig, ParamValues) throws -> any GateComponent
    init(id: String, params: [ParamSpec], make: @escaping (PluginHost, GateConfig, ParamValues) throws -> any GateComponent) {
        self.make = make
        super.init(id: id, params: params)
    }
}

typealias GateInstance = Instance<any GateComponent>

extension Component {
    /// A gate component implemented by `type`.
    /// - Parameters:
    ///   - flags: `.sampled` for random gates, `.hard` if it may write `active[i] = 0`.
    ///   - granularities: what rows it can gate (default: ops).
    public static func gate<G: GateComponent>(_ type: G.Type, id: String, summary: String, params: [ParamSpec] = [],
                                              methods: [DynamicMethod] = [], flags: GateFlags = [],
                                              granularities: GateGranularities = .ops) -> Component {
        let factory = GateFactory(id: id, params: params) { host, config, values in
            try G(host: host, config: config, params: values)
        }
        return Component(kind: ES_KIND_GATE, id: id, summary: summary, params: params, methods: methods, factory: factory) {
            immortalTable(GateThunks.table(flags: flags, granularities: granularities))
        }
    }
}

/// The C functions of every Swift gate.
enum GateThunks {
    static func table(flags: GateFlags, granularities: GateGranularities) -> es_gate_vtable {
        var t = es_gate_vtable()
        t.struct_size = UInt32(MemoryLayout<es_gate_vtable>.size)
        t.flags = flags.rawValue
        t.granularities = granularities.rawValue
        t.create = { component, services, config, params, count, instance in
            createInstance(services, instance) { host -> GateInstance in
                let factory = try ComponentFactory.from(component, as: GateFactory.self)
                let cfg = try GateConfig(config)
                let values = try ParamValues(params, count: count, declared: factory.params)
                let gate = try factory.make(host, cfg, values)
                return GateInstance(gate, host: host, id: factory.id, expectedCount: cfg.rows * cfg.cols)
            }
        }
        t.destroy = { instance in GateInstance.release(instance) }
        t.forward = { instance, state, logits, weights, active in
            guard let box = GateInstance.from(instance) else { return nullInstanceStatus }
            return box.call("forward") {
                let s = try RunState(state)
                let l = try TensorView(logits, "forward: logits")
                let w = try TensorView(weights, "forward: weights")
                try GateThunks.checkLogits(l, box)
                try l.requireSameShape(as: w, "forward: weights")
                let a = active.map { UnsafeMutableBufferPointer(start: $0, count: l.count) }
                try box.object.forward(state: s, logits: l, weights: w, active: a)
            }
        }
        t.backward = { instance, state, logits, weights, dWeights, dLogits in
            guard let box = GateInstance.from(instance) else { return nullInstanceStatus }
            return box.call("backward") {
                let s = try RunState(state)
                let l = try TensorView(logits, "backward: logits")
                let w = try TensorView(weights, "backward: weights")
                let dw = try TensorView(dWeights, "backward: d_weights")
                let dl = try TensorView(dLogits, "backward: d_logits")
                try GateThunks.checkLogits(l, box)
                try l.requireSameShape(as: w, "backward: weights")
                try l.requireSameShape(as: dw, "backward: d_weights")
                try l.requireSameShape(as: dl, "backward: d_logits")
                try box.object.backward(state: s, logits: l, weights: w, dWeights: dw, dLogits: dl)
            }
        }
        t.set_value = { instance, name, value in
            guard let box = GateInstance.from(instance) else { return nullInstanceStatus }
            return box.call("set_value") {
                guard let name else { throw PluginError.invalidArgument("set_value: name is NULL") }
                try box.object.setValue(String(cString: name), value)
            }
        }
        return t
    }

    static func checkLogits(_ logits: TensorView, _ box: GateInstance) throws {
        guard box.expectedCount < 0 || logits.count == box.expectedCount else {
            throw PluginError.shape("logits have \(logits.count) elements (shape \(logits.shape)), but the gate was created for \(box.expectedCount)")
        }
    }
}
