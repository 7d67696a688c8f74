// Self-description: parameters (`ParamSpec`), dynamic methods (`DynamicMethod`) and components
// (`Component`, made by `.gate`, `.op`, `.regularizer`, `.strategy` in the kind files), turned by
// `Plugin.describe` into C tables that live for the life of the process. Also the per-component
// factory box behind `user_data` and the per-instance box behind `void *instance`.

/// One user-settable parameter of a component (`--set NAME=VALUE`).
public struct ParamSpec: Sendable {
    /// BOOL, INT, DOUBLE, STRING or CHOICE.
    public let type: ParamType
    /// [a-z0-9_.-]+, unique within the component.
    public let name: String
    /// The default, as text parsed by type.
    public let defaultText: String
    /// One line.
    public let doc: String
    /// CHOICE only.
    public let choices: [String]
    /// INT and DOUBLE: inclusive bounds; nil = unbounded on that side.
    public let min: Double?
    /// See `min`.
    public let max: Double?

    /// A BOOL parameter ("true"/"false").
    public static func bool(_ name: String, default value: Bool, doc: String) -> ParamSpec {
        ParamSpec(type: .bool, name: name, defaultText: value ? "true" : "false", doc: doc, choices: [], min: nil, max: nil)
    }

    /// An INT parameter (64-bit), optionally bounded.
    public static func int(_ name: String, default value: Int, doc: String, min: Int? = nil, max: Int? = nil) -> ParamSpec {
        ParamSpec(type: .int, name: name, defaultText: String(value), doc: doc, choices: [], min: min.map(Double.init), max: max.map(Double.init))
    }

    /// A DOUBLE parameter (finite), optionally bounded.
    public static func double(_ name: String, default value: Double, doc: String, min: Double? = nil, max: Double? = nil) -> ParamSpec {
        ParamSpec(type: .double, name: name, defaultText: "\(value)", doc: doc, choices: [], min: min, max: max)
    }

    /// A STRING parameter (any UTF-8 text).
    public static func string(_ name: String, default value: String, doc: String) -> ParamSpec {
        ParamSpec(type: .string, name: name, defaultText: value, doc: doc, choices: [], min: nil, max: nil)
    }

    /// One of `choices`; `value` must be one of them.
    public static func choice(_ name: String, default value: String, choices: [String], doc: String) -> ParamSpec {
        ParamSpec(type: .choice, name: name, defaultText: value, doc: doc, choices: choices, min: nil, max: nil)
    }

    /// The default as a resolved value (used when the host passes no value for this name).
    var defaultValue: ParamValues.Value {
        switch type {
        case .bool:
            let b = defaultText == "true"
            return .init(type: type, int: b ? 1 : 0, double: b ? 1 : 0, text: defaultText)
        case .int:
            let i = Int64(defaultText) ?? 0
            return .init(type: type, int: i, double: Double(i), text: defaultText)
        case .double:
            let d = Double(defaultText) ?? 0
            return .init(type: type, int: Int64(exactly: d.rounded()) ?? 0, double: d, text: defaultText)
        case .string:
            return .init(type: type, int: 0, double: 0, text: defaultText)
        case .choice:
            return .init(type: type, int: Int64(choices.firstIndex(of: defaultText) ?? 0), double: 0, text: defaultText)
        }
    }

    var c: es_param_desc {
        var d = es_param_desc()
        d.struct_size = UInt32(MemoryLayout<es_param_desc>.size)
        d.type = type.rawValue
        d.name = immortalCString(name)
        d.default_value = immortalCString(defaultText)
        d.doc = immortalCString(doc)
        d.choices = type == .choice ? immortalCString(choices.joined(separator: "|")) : nil
        if min == nil && max == nil {
            d.min_value = 1  // min > max: unbounded
            d.max_value = 0
        } else {
            // One-sided bounds: the open side is the largest finite double (JSON-safe, unlike ∞).
            d.min_value = min ?? -Double.greatestFiniteMagnitude
            d.max_value = max ?? Double.greatestFiniteMagnitude
        }
        return d
    }
}

/// A dynamic method: an extra C function the host calls through libffi, selectable by name,
/// e.g. `--set tau.schedule=linear-decay`.
public struct DynamicMethod: @unchecked Sendable {
    /// What it can be selected for, e.g. "tau.schedule".
    public let slot: String
    /// Its name within the slot, e.g. "linear-decay".
    public let name: String
    /// Its C signature, e.g. "double(int64,int64)" (grammar in espalier_abi.h).
    public let signature: String
    /// One line.
    public let doc: String
    /// The C function; nil if the function given was not a C function pointer (the host then
    /// refuses the library, naming this method).
    public let function: UnsafeRawPointer?

    /// A `double(int64,int64)` method, e.g. a schedule value(step, total).
    public init(slot: String, name: String, doc: String, function: @convention(c) (Int64, Int64) -> Double) {
        self.init(slot: slot, name: name, signature: "double(int64,int64)", doc: doc, function: function)
    }

    /// A `double(double)` method.
    public init(slot: String, name: String, doc: String, function: @convention(c) (Double) -> Double) {
        self.init(slot: slot, name: name, signature: "double(double)", doc: doc, function: function)
    }

    /// A `double(int64)` method.
    public init(slot: String, name: String, doc: String, function: @convention(c) (Int64) -> Double) {
        self.init(slot: slot, name: name, signature: "double(int64)", doc: doc, function: function)
    }

    /// Any signature. `function` must be a `@convention(c)` function whose C type matches
    /// `signature`, e.g. `let f: @convention(c) (UInt64, Float) -> Int32 = myFunction`.
    public init<F>(slot: String, name: String, signature: String, doc: String, function: F) {
        self.slot = slot
        self.name = name
        self.signature = signature
        self.doc = doc
        // A C function pointer is one pointer wide; a Swift closure is two (and is refused).
        if MemoryLayout<F>.size == MemoryLayout<UnsafeRawPointer>.size {
            self.function = withUnsafeBytes(of: function) { $0.load(as: UnsafeRawPointer?.self) }
        } else {
            self.function = nil
        }
    }

    var c: es_dynamic_method_desc {
        var d = es_dynamic_method_desc()
        d.struct_size = UInt32(MemoryLayout<es_dynamic_method_desc>.size)
        d.slot = immortalCString(slot)
        d.name = immortalCString(name)
        d.signature = immortalCString(signature)
        d.doc = immortalCString(doc)
        d.function = function.map { unsafeBitCast($0, to: (@convention(c) () -> Void).self) }
        return d
    }
}

/// One component of a library, made with `.gate(…)`, `.op(…)`, `.regularizer(…)` or
/// `.strategy(…)` and given to `Plugin.describe`.
public struct Component {
    /// `ES_KIND_*`.
    public let kind: es_kind
    /// "vendor.kind.name/revision", e.g. "org.example.gate.sparsemax/1".
    public let id: String
    /// One line.
    public let summary: String
    /// Its parameters, in the order `create` receives them.
    public let params: [ParamSpec]
    /// Its dynamic methods.
    public let methods: [DynamicMethod]
    /// The search method this component brings (ABI 1.5), set with `bringing(_:)`.
    public private(set) var method: SearchMethod?
    /// Allocates the kind's vtable (shared thunks, this component's flags).
    let makeVTable: () -> UnsafeRawPointer
    /// What `create` instantiates; stored, retained forever, in `user_data`.
    let factory: ComponentFactory

    init(kind: es_kind, id: String, summary: String, params: [ParamSpec], methods: [DynamicMethod],
         factory: ComponentFactory, makeVTable: @escaping () -> UnsafeRawPointer) {
        self.kind = kind; self.id = id; self.summary = summary; self.params = params; self.methods = methods
        self.factory = factory; self.makeVTable = makeVTable
    }

    /// This component, bringing the search method `method` (`espalier search --method NAME`).
    public func bringing(_ method: SearchMethod) -> Component {
        var c = self
        c.method = method
        return c
    }

    /// The C descriptor and everything it points to, allocated once and never freed.
    func makeDescriptor() -> es_component_desc {
        var d = es_component_desc()
        d.struct_size = UInt32(MemoryLayout<es_component_desc>.size)
        d.kind = kind
        d.id = immortalCString(id)
        d.summary = immortalCString(summary)
        if !params.isEmpty {
            let p = UnsafeMutablePointer<es_param_desc>.allocate(capacity: params.count)
            for (i, spec) in params.enumerated() { (p + i).initialize(to: spec.c) }
            d.params = UnsafePointer(p)
        }
        d.param_count = UInt32(params.count)
        if !methods.isEmpty {
            let m = UnsafeMutablePointer<es_dynamic_method_desc>.allocate(capacity: methods.count)
            for (i, method) in methods.enumerated() { (m + i).initialize(to: method.c) }
            d.methods = UnsafePointer(m)
        }
        d.method_count = UInt32(methods.count)
        d.vtable = makeVTable()
        d.user_data = Unmanaged.passRetained(factory).toOpaque()
        d.method = method.map { UnsafePointer(immortalTable($0.c).assumingMemoryBound(to: es_method_desc.self)) }
        return d
    }
}

/// A search method as users know it ("gdas", "betadarts"), brought by one component
/// (`Component.bringing(_:)`; ABI 1.5 `es_method_desc`): `espalier search --method NAME` selects
/// its strategy, gates, ops, regularizers and settings; any flag the user gives overrides one.
public struct SearchMethod: Sendable {
    /// [a-z0-9-]+, e.g. "gdas".
    public let name: String
    /// One line.
    public let summary: String
    /// Its strategy's id; nil = the component that brings it (a strategy).
    public let strategy: String?
    /// Default gate id; nil = the host's default.
    public let gate: String?
    /// Default gate of per-channel masks (`--channel-gate`).
    public let channelGate: String?
    /// Default regularizer ids, in order.
    public let regularizers: [String]
    /// Candidate ops replacing the eight DARTS ops (empty: keep them).
    public let ops: [String]
    /// `--merged-op` ids.
    public let mergedOps: [String]
    /// "KEY=VALUE", keys as in `--set` (strategy.NAME, gate.NAME, SHORT.NAME, SLOT).
    public let settings: [String]

    public init(name: String, summary: String, strategy: String? = nil, gate: String? = nil, channelGate: String? = nil,
                regularizers: [String] = [], ops: [String] = [], mergedOps: [String] = [], settings: [String] = []) {
        self.name = name; self.summary = summary; self.strategy = strategy; self.gate = gate; self.channelGate = channelGate
        self.regularizers = regularizers; self.ops = ops; self.mergedOps = mergedOps; self.settings = settings
    }

    var c: es_method_desc {
        func list(_ items: [String]) -> UnsafePointer<UnsafePointer<CChar>?>? {
            guard !items.isEmpty else { return nil }
            let p = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: items.count)
            for (i, item) in items.enumerated() { (p + i).initialize(to: immortalCString(item)) }
            return UnsafePointer(p)
        }
        var d = es_method_desc()
        d.struct_size = UInt32(MemoryLayout<es_method_desc>.size)
        d.name = immortalCString(name)
        d.summary = immortalCString(summary)
        d.strategy = strategy.map(immortalCString)
        d.gate = gate.map(immortalCString)
        d.channel_gate = channelGate.map(immortalCString)
        d.regularizers = list(regularizers)
        d.regularizer_count = UInt32(regularizers.count)
        d.ops = list(ops)
        d.op_count = UInt32(ops.count)
        d.merged_ops = list(mergedOps)
        d.merged_op_count = UInt32(mergedOps.count)
        d.settings = list(settings)
        d.setting_count = UInt32(settings.count)
        return d
    }
}

/// Copies a filled-in vtable into memory that is never freed.
func immortalTable<T>(_ value: T) -> UnsafeRawPointer {
    let p = UnsafeMutablePointer<T>.allocate(capacity: 1)
    p.initialize(to: value)
    return UnsafeRawPointer(p)
}

/// What a component's `create` needs: its id, declared parameters, and (in subclasses) the
/// closure that makes the Swift instance.
class ComponentFactory {
    let id: String
    let params: [ParamSpec]
    init(id: String, params: [ParamSpec]) { self.id = id; self.params = params }

    /// The factory of a descriptor the host passed to `create`, as the kind's subclass.
    static func from<F: ComponentFactory>(_ component: UnsafePointer<es_component_desc>?, as type: F.Type) throws -> F {
        guard let component else { throw PluginError.invalidArgument("create: component descriptor is NULL") }
        guard let userData = component.pointee.user_data else {
            throw PluginError.invalidArgument("create: the component descriptor has no user_data (not this library's descriptor?)")
        }
        let any = Unmanaged<ComponentFactory>.fromOpaque(userData).takeUnretainedValue()
        guard let factory = any as? F else {
            throw PluginError.invalidArgument("create: component '\(any.id)' is not of the kind of this table")
        }
        return factory
    }
}

/// A live instance behind `void *instance`: the Swift object, the host that made it, and its id.
final class Instance<Object> {
    let object: Object
    let host: PluginHost
    let id: String
    /// Gates: rows·cols of the config, checked against every logits view.
    let expectedCount: Int

    init(_ object: Object, host: PluginHost, id: String, expectedCount: Int = -1) {
        self.object = object; self.host = host; self.id = id; self.expectedCount = expectedCount
    }

    /// Retains the box and returns the opaque pointer for `*instance`.
    func retainedPointer() -> UnsafeMutableRawPointer { Unmanaged.passRetained(self).toOpaque() }

    /// The box behind a pointer `create` returned (nil for NULL).
    static func from(_ pointer: UnsafeMutableRawPointer?) -> Instance<Object>? {
        pointer.map { Unmanaged<Instance<Object>>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Releases the box made by `create`.
    static func release(_ pointer: UnsafeMutableRawPointer?) {
        guard let pointer else { return }
        Unmanaged<Instance<Object>>.fromOpaque(pointer).release()
    }

    /// Runs a method body at the boundary, reporting errors through this instance's host.
    @inline(__always)
    func call(_ what: String, _ body: () throws -> Void) -> es_status {
        guardBoundary(host, "\(id) \(what)", body)
    }
}

/// Runs `create` at the boundary: checks the host table and `instance`, builds the Swift object
/// and stores its retained box in `*instance`.
@inline(__always)
func createInstance<Object>(_ services: UnsafePointer<es_host_services>?, _ out: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                            _ make: (PluginHost) throws -> Instance<Object>) -> es_status {
    guard let host = PluginHost(services) else { return ES_ERROR_INVALID_ARGUMENT }
    guard let out else {
        host.setError("create: the instance pointer is NULL")
        return ES_ERROR_INVALID_ARGUMENT
    }
    return guardBoundary(host, "create") {
        let box = try make(host)
        out.pointee = box.retainedPointer()
    }
}

/// Host-side `instance` pointers arrive as `void *`; a NULL one cannot even report a message.
let nullInstanceStatus: es_status = ES_ERROR_INVALID_ARGUMENT
