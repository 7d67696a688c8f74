// Strategies in Swift: `StrategyComponent` (planStep required, hooks with no-op defaults),
// `DerivingStrategy` (optional derive; NULL otherwise, so the host derives with the DARTS rule),
// `StatefulComponent` (optional save_state / load_state, State.swift; NULL otherwise),
// `Component.strategy(…)`, and the C thunks of `es_strategy_vtable`. The search services are
// `host.search` (see PluginHost.swift).

/// What a step does (`ES_STEP_*`).
public enum StepMode: Int32, Sendable {
    /// Architecture step on a validation batch, then weight step on a training batch.
    case bilevel = 1
    /// Weights and architecture from the same training batch.
    case singleLevel = 2
    /// Weight step only (warm-up).
    case weightsOnly = 3
    /// Forward without gradients (scoring).
    case forwardOnly = 4
    /// Nothing: the strategy did its own work through the services.
    case skip = 5
}

/// The plan of one step (`es_step_plan`).
public struct StepPlan: Sendable {
    /// What the step does.
    public var mode: StepMode
    /// Bilevel: unrolled (second-order) architecture gradient.
    public var secondOrder: Bool
    /// Multiplies the architecture learning rate this step (1 = as configured).
    public var archLRScale: Double

    public init(_ mode: StepMode, secondOrder: Bool = false, archLRScale: Double = 1) {
        self.mode = mode; self.secondOrder = secondOrder; self.archLRScale = archLRScale
    }
}

/// One epoch's results (`es_epoch_metrics`).
public struct EpochMetrics: Sendable {
    /// Mean training loss and accuracy of the epoch.
    public var trainLoss: Double, trainAccuracy: Double
    /// Validation loss and accuracy after the epoch.
    public var validLoss: Double, validAccuracy: Double
    /// Wall-clock time of the epoch.
    public var seconds: Double
    /// The accountant's peak during the epoch.
    public var peakBytes: UInt64

    init(_ pointer: UnsafePointer<es_epoch_metrics>?) throws {
        guard let pointer else { throw PluginError.invalidArgument("epoch metrics are NULL") }
        try checkStructSize(UnsafeRawPointer(pointer), es_epoch_metrics.self, "epoch metrics")
        let m = pointer.pointee
        trainLoss = m.train_loss; trainAccuracy = m.train_accuracy
        validLoss = m.valid_loss; validAccuracy = m.valid_accuracy
        seconds = m.seconds; peakBytes = m.peak_bytes
    }
}

/// What a strategy needs from the other components (`ES_REQUIRES_*`).
public struct StrategyRequirements: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let archParams = StrategyRequirements(rawValue: UInt32(ES_REQUIRES_ARCH_PARAMS))
    public static let sampledGate = StrategyRequirements(rawValue: UInt32(ES_REQUIRES_SAMPLED_GATE))
    public static let hardGate = StrategyRequirements(rawValue: UInt32(ES_REQUIRES_HARD_GATE))
    public static let noArchParams = StrategyRequirements(rawValue: UInt32(ES_REQUIRES_NO_ARCH_PARAMS))
}

/// A search strategy: what each step and epoch does. Host thread, one call at a time; change the
/// search through `host.search` during these calls.
public protocol StrategyComponent: AnyObject {
    init(host: PluginHost, params: ParamValues) throws
    /// What the step described by `state` does.
    func planStep(state: RunState) throws -> StepPlan
    /// After each step. Default: nothing.
    func afterStep(state: RunState) throws
    /// Before each epoch. Default: nothing.
    func epochBegin(state: RunState) throws
    /// After each epoch; return true to end the search. Default: false.
    func epochEnd(state: RunState, metrics: EpochMetrics) throws -> Bool
}

extension StrategyComponent {
    public func afterStep(state: RunState) throws {}
    public func epochBegin(state: RunState) throws {}
    public func epochEnd(state: RunState, metrics: EpochMetrics) throws -> Bool { false }
}

/// A strategy that derives the architecture itself (else the host uses the DARTS rule).
public protocol DerivingStrategy: StrategyComponent {
    /// The found architecture as JSON (genotype format).
    func derive(state: RunState) throws -> String
}

final class StrategyFactory: ComponentFactory {
    let make: (PluginHost, ParamValues) throws -> any StrategyComponent
    init(id: String, params: [ParamSpec], make: @escaping (PluginHost, ParamValues) throws -> any StrategyComponent) {
        self.make = make
        super.init(id: id, params: params)
    }
}

typealias StrategyInstance = Instance<any StrategyComponent>

extension Component {
    /// A strategy implemented by `type`; `derive` is set if it conforms to `DerivingStrategy`.
    /// - Parameter requires: what it needs from the other components.
    public static func strategy<S: StrategyComponent>(_ type: S.Type, id: String, summary: String, params: [ParamSpec] = [],
                                                      methods: [DynamicMethod] = [],
                                                      requires: StrategyRequirements = []) -> Component {
        let factory = StrategyFactory(id: id, params: params) { host, values in try S(host: host, params: values) }
        let derive = S.self is any DerivingStrategy.Type
        let stateful = S.self is any StatefulComponent.Type
        return Component(kind: ES_KIND_STRATEGY, id: id, summary: summary, params: params, methods: methods, factory: factory) {
            immortalTable(StrategyThunks.table(requires: requires, derive: derive, stateful: stateful))
        }
    }
}

/// The C functions of every Swift strategy.
enum StrategyThunks {
    static func table(requires: StrategyRequirements, derive: Bool, stateful: Bool) -> es_strategy_vtable {
        var t = es_strategy_vtable()
        t.struct_size = UInt32(MemoryLayout<es_strategy_vtable>.size)
        t.requires = requires.rawValue
        t.create = { component, services, params, count, instance in
            createInstance(services, instance) { host -> StrategyInstance in
                let factory = try ComponentFactory.from(component, as: StrategyFactory.self)
                let values = try ParamValues(params, count: count, declared: factory.params)
                return StrategyInstance(try factory.make(host, values), host: host, id: factory.id)
            }
        }
        t.destroy = { instance in StrategyInstance.release(instance) }
        t.plan_step = { instance, state, plan in
            guard let box = StrategyInstance.from(instance) else { return nullInstanceStatus }
            return box.call("plan_step") {
                guard let plan else { throw PluginError.invalidArgument("plan_step: plan is NULL") }
                try checkStructSize(UnsafeRawPointer(plan), es_step_plan.self, "plan_step: plan")
                let p = try box.object.planStep(state: try RunState(state))
                plan.pointee.mode = p.mode.rawValue
                plan.pointee.second_order = p.secondOrder ? 1 : 0
                plan.pointee.arch_lr_scale = p.archLRScale
            }
        }
        t.after_step = { instance, state in
            guard let box = StrategyInstance.from(instance) else { return nullInstanceStatus }
            return box.call("after_step") { try box.object.afterStep(state: try RunState(state)) }
        }
        t.epoch_begin = { instance, state in
            guard let box = StrategyInstance.from(instance) else { return nullInstanceStatus }
            return box.call("epoch_begin") { try box.object.epochBegin(state: try RunState(state)) }
        }
        t.epoch_end = { instance, state, metrics, stop in
            guard let box = StrategyInstance.from(instance) else { return nullInstanceStatus }
            return box.call("epoch_end") {
                let s = try box.object.epochEnd(state: try RunState(state), metrics: try EpochMetrics(metrics))
                stop?.pointee = s ? 1 : 0
            }
        }
        if derive {
            t.derive = { instance, state, buffer, capacity, length in
                guard let box = StrategyInstance.from(instance) else { return nullInstanceStatus }
                return box.call("derive") {
                    guard let d = box.object as? any DerivingStrategy else { throw PluginError.unsupported("this strategy does not derive") }
                    let json = Array(try d.derive(state: try RunState(state)).utf8)
                    let needed = UInt64(json.count + 1)
                    length?.pointee = UInt64(json.count)
                    guard let buffer, capacity >= needed else {
                        length?.pointee = needed
                        throw PluginError.invalidArgument("derive: the buffer holds \(capacity) bytes, the architecture needs \(needed)")
                    }
                    for (i, byte) in json.enumerated() { buffer[i] = CChar(bitPattern: byte) }
                    buffer[json.count] = 0
                }
            }
        }
        if stateful {
            t.save_state = { instance, buffer, capacity, length in StateThunks.save(StrategyInstance.from(instance), buffer, capacity, length) }
            t.load_state = { instance, bytes, length in StateThunks.load(StrategyInstance.from(instance), bytes, length) }
        }
        return t
    }
}
