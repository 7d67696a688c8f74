// Regularizers in Swift: `RegularizerComponent` plus `LossRegularizer` (a loss term) and/or
// `ProximalRegularizer` (an in-place step after the optimiser), `Component.regularizer(…)`, and
// the C thunks of `es_regularizer_vtable`; `loss`/`proximal` are NULL unless the type conforms, and
// so are `save_state`/`load_state` (`StatefulComponent`, State.swift).

/// What a regularizer sees (`ES_TARGET_*`).
public enum TargetKind: Int32, Sendable {
    /// Architecture logits of one cell type ("arch/normal").
    case arch = 1
    /// A group of weight tensors, several parts per group.
    case weightGroup = 2
    /// A gate's output weights with per-candidate costs.
    case gateWeights = 3
}

/// The target kinds a regularizer asks for (`es_regularizer_vtable.targets`).
public struct RegularizerTargets: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let arch = RegularizerTargets(rawValue: 1 << UInt32(ES_TARGET_ARCH))
    public static let weightGroup = RegularizerTargets(rawValue: 1 << UInt32(ES_TARGET_WEIGHT_GROUP))
    public static let gateWeights = RegularizerTargets(rawValue: 1 << UInt32(ES_TARGET_GATE_WEIGHTS))
}

/// One named target (`es_reg_target`): its parts' values, gradients (to add into; no data = no
/// gradient wanted) and, for gate weights, per-candidate costs.
public struct RegularizerTarget {
    /// nil for a kind newer than this kit.
    public let kind: TargetKind?
    /// E.g. "arch/normal" or "group/normal/edge3/sep_conv_3x3".
    public let name: String
    /// Writable in `proximal` only.
    public let values: [TensorView]
    /// Gradients to ADD into (no data = no gradient wanted).
    public let grads: [TensorView]
    /// `.gateWeights` only: same shapes as `values`.
    public let costs: [TensorView]?

    init(_ p: UnsafeMutablePointer<es_reg_target>, _ index: Int) throws {
        let what = "target #\(index)"
        try checkStructSize(UnsafeRawPointer(p), es_reg_target.self, what)
        let t = p.pointee
        kind = TargetKind(rawValue: t.kind)
        name = stringOrEmpty(t.name)
        values = try OpThunks.views(t.values, t.part_count, "\(what) values")
        grads = try OpThunks.views(t.grads.map { UnsafePointer($0) }, t.part_count, "\(what) grads")
        costs = t.costs == nil ? nil : try OpThunks.views(t.costs, t.part_count, "\(what) costs")
    }

    static func array(_ p: UnsafeMutablePointer<es_reg_target>?, _ count: UInt32) throws -> [RegularizerTarget] {
        guard count > 0 else { return [] }
        guard let p else { throw PluginError.invalidArgument("target_count is \(count) but targets is NULL") }
        return try (0..<Int(count)).map { try RegularizerTarget(p + $0, $0) }
    }
}

/// What every regularizer has. Conform to `LossRegularizer`, `ProximalRegularizer`, or both.
public protocol RegularizerComponent: AnyObject {
    init(host: PluginHost, params: ParamValues) throws
    /// Sets a named scalar (e.g. "lambda"). Default: throws `ES_ERROR_UNSUPPORTED`.
    func setValue(_ name: String, _ value: Double) throws
}

extension RegularizerComponent {
    public func setValue(_ name: String, _ value: Double) throws {
        throw PluginError.unsupported("this regularizer has no settable value '\(name)'")
    }
}

/// A loss term: returns λ·R and ADDS ∂(λ·R)/∂value into each target's `grads`.
public protocol LossRegularizer: RegularizerComponent {
    func loss(state: RunState, targets: [RegularizerTarget]) throws -> Double
}

/// A proximal step: after the optimiser's update with learning rate `lr`, changes values in place.
public protocol ProximalRegularizer: RegularizerComponent {
    func proximal(state: RunState, targets: [RegularizerTarget], lr: Double) throws
}

final class RegularizerFactory: ComponentFactory {
    let make: (PluginHost, ParamValues) throws -> any RegularizerComponent
    init(id: String, params: [ParamSpec], make: @escaping (PluginHost, ParamValues) throws -> any RegularizerComponent) {
        self.make = make
        super.init(id: id, params: params)
    }
}

typealias RegularizerInstance = Instance<any RegularizerComponent>

extension Component {
    /// A regularizer implemented by `type`; `loss` and `proximal` are set by its conformances.
    /// - Parameter targets: the target kinds it wants.
    public static func regularizer<R: RegularizerComponent>(_ type: R.Type, id: String, summary: String,
                                                            params: [ParamSpec] = [], methods: [DynamicMethod] = [],
                                                            targets: RegularizerTargets) -> Component {
        let factory = RegularizerFactory(id: id, params: params) { host, values in try R(host: host, params: values) }
        let loss = R.self is any LossRegularizer.Type
        let proximal = R.self is any ProximalRegularizer.Type
        let stateful = R.self is any StatefulComponent.Type
        return Component(kind: ES_KIND_REGULARIZER, id: id, summary: summary, params: params, methods: methods, factory: factory) {
            immortalTable(RegularizerThunks.table(targets: targets, loss: loss, proximal: proximal, stateful: stateful))
        }
    }
}

/// The C functions of every Swift regularizer.
enum RegularizerThunks {
    static func table(targets: RegularizerTargets, loss: Bool, proximal: Bool, stateful: Bool) -> es_regularizer_vtable {
        var t = es_regularizer_vtable()
        t.struct_size = UInt32(MemoryLayout<es_regularizer_vtable>.size)
        t.targets = targets.rawValue
        t.create = { component, services, params, count, instance in
            createInstance(services, instance) { host -> RegularizerInstance in
                let factory = try ComponentFactory.from(component, as: RegularizerFactory.self)
                let values = try ParamValues(params, count: count, declared: factory.params)
                return RegularizerInstance(try factory.make(host, values), host: host, id: factory.id)
            }
        }
        t.destroy = { instance in RegularizerInstance.release(instance) }
        if loss {
            t.loss = { instance, state, targets, count, out in
                guard let box = RegularizerInstance.from(instance) else { return nullInstanceStatus }
                return box.call("loss") {
                    guard let r = box.object as? any LossRegularizer else { throw PluginError.unsupported("this regularizer has no loss") }
                    guard let out else { throw PluginError.invalidArgument("loss: output pointer is NULL") }
                    out.pointee = try r.loss(state: try RunState(state), targets: try RegularizerTarget.array(targets, count))
                }
            }
        }
        if proximal {
            t.proximal = { instance, state, targets, count, lr in
                guard let box = RegularizerInstance.from(instance) else { return nullInstanceStatus }
                return box.call("proximal") {
                    guard let r = box.object as? any ProximalRegularizer else { throw PluginError.unsupported("this regularizer has no proximal step") }
                    try r.proximal(state: try RunState(state), targets: try RegularizerTarget.array(targets, count), lr: lr)
                }
            }
        }
        t.set_value = { instance, name, value in
            guard let box = RegularizerInstance.from(instance) else { return nullInstanceStatus }
            return box.call("set_value") {
                guard let name else { throw PluginError.invalidArgument("set_value: name is NULL") }
                try box.object.setValue(String(cString: name), value)
            }
        }
        if stateful {
            t.save_state = { instance, buffer, capacity, length in StateThunks.save(RegularizerInstance.from(instance), buffer, capacity, length) }
            t.load_state = { instance, bytes, length in StateThunks.load(RegularizerInstance.from(instance), bytes, length) }
        }
        return t
    }
}
