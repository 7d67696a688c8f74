// A plugin strategy instance: the trainer asks it what each step does and calls its hooks.
// While a search runs, the context's search services (host->search) are what it acts through.

import CEspalierSDK
import EspalierCore
import Foundation

public struct StepPlan: Sendable, Equatable {
    public enum Mode: Int32, Sendable { case bilevel = 1, singleLevel = 2, weightsOnly = 3, forwardOnly = 4, skip = 5 }
    public var mode: Mode
    public var secondOrder: Bool
    public var archLRScale: Double
}

public struct EpochMetrics: Sendable {
    public var trainLoss = 0.0, trainAccuracy = 0.0, validLoss = 0.0, validAccuracy = 0.0, seconds = 0.0
    public var peakBytes = 0
    public init() {}
}

public final class PluginStrategy {
    public let component: Component
    let context: HostContext
    let table: es_strategy_vtable
    let instance: UnsafeMutableRawPointer?

    public init(_ component: Component, context: HostContext, settings: [String: String] = [:]) throws {
        guard component.kind == .strategy, let table = component.strategyTable else {
            throw PluginLoadError("\(component.id) is a \(component.kind.rawValue), not a strategy")
        }
        self.component = component; self.context = context; self.table = table
        let params = try ResolvedParams(component: component, settings: settings)
        var inst: UnsafeMutableRawPointer? = nil
        try context.accountant.withOwner("strategy") {
            try context.check("\(component.id): create") { table.create!(component.descriptor, context.services, params.values, UInt32(params.count), &inst) }
        }
        instance = inst
    }

    deinit { table.destroy?(instance) }

    /// The instance's own state for the checkpoint (ABI 1.3 save_state): nil when the plugin keeps
    /// none (no save_state, or built for ABI 1.2 or older).
    public func saveState() throws -> [UInt8]? { try context.savedState(component.id, table.save_state, instance) }

    /// Restores a blob `saveState` returned; false when the plugin keeps no state (the blob is ignored).
    @discardableResult
    public func loadState(_ bytes: [UInt8]) throws -> Bool { try context.loadState(component.id, table.load_state, instance, bytes) }

    public var requirements: UInt32 { table.requires }

    public func planStep(_ state: RunState) throws -> StepPlan {
        var st = state.c
        var plan = es_step_plan()
        plan.struct_size = UInt32(MemoryLayout<es_step_plan>.size)
        plan.mode = ES_STEP_BILEVEL
        plan.arch_lr_scale = 1
        try context.check("\(component.id): plan_step") { table.plan_step!(instance, &st, &plan) }
        guard let mode = StepPlan.Mode(rawValue: plan.mode) else {
            throw PluginCallError(status: ES_ERROR_INVALID_ARGUMENT, context: "\(component.id): plan_step", message: "unknown step mode \(plan.mode)")
        }
        return StepPlan(mode: mode, secondOrder: plan.second_order != 0, archLRScale: plan.arch_lr_scale)
    }

    public func afterStep(_ state: RunState) throws {
        guard let fn = table.after_step else { return }
        var st = state.c
        try context.check("\(component.id): after_step") { fn(instance, &st) }
    }

    public func epochBegin(_ state: RunState) throws {
        guard let fn = table.epoch_begin else { return }
        var st = state.c
        try context.check("\(component.id): epoch_begin") { fn(instance, &st) }
    }

    /// Returns true when the strategy asks to stop.
    public func epochEnd(_ state: RunState, metrics: EpochMetrics) throws -> Bool {
        guard let fn = table.epoch_end else { return false }
        var st = state.c
        var m = es_epoch_metrics()
        m.struct_size = UInt32(MemoryLayout<es_epoch_metrics>.size)
        m.train_loss = metrics.trainLoss; m.train_accuracy = metrics.trainAccuracy
        m.valid_loss = metrics.validLoss; m.valid_accuracy = metrics.validAccuracy
        m.seconds = metrics.seconds; m.peak_bytes = UInt64(metrics.peakBytes)
        var stop: Int32 = 0
        try context.check("\(component.id): epoch_end") { fn(instance, &st, &m, &stop) }
        return stop != 0
    }

    /// The strategy's own architecture JSON, or nil when it leaves derivation to the host.
    public func derive(_ state: RunState) throws -> String? {
        guard let fn = table.derive else { return nil }
        var st = state.c
        var capacity = 4096
        for _ in 0..<4 {
            var buffer = [CChar](repeating: 0, count: capacity)
            var length: UInt64 = 0
            context.clearError()
            let status = buffer.withUnsafeMutableBufferPointer { fn(instance, &st, $0.baseAddress, UInt64(capacity), &length) }
            if status == ES_OK { return String(cString: buffer) }
            if status == ES_ERROR_INVALID_ARGUMENT, Int(length) >= capacity { capacity = Int(length) + 1; continue }
            throw PluginCallError(status: status, context: "\(component.id): derive", message: context.takeError() ?? "no message")
        }
        throw PluginCallError(status: ES_ERROR_INTERNAL, context: "\(component.id): derive", message: "kept asking for a larger buffer")
    }
}
