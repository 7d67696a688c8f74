// A plugin regularizer instance: a loss term with gradients into named targets (architecture
// logits, weight groups, gate weights with costs), and/or a proximal step after the optimiser.

import CEspalierSDK
import EspalierCore
import Foundation

public struct RegularizerTarget {
    public enum Kind: Int32, Sendable { case arch = 1, weightGroup = 2, gateWeights = 3 }
    public var kind: Kind
    public var name: String
    public var values: [Tensor]
    /// Where gradients are added (nil entries: no gradient wanted).
    public var grads: [Tensor?]
    /// Per-candidate costs for gate-weight targets.
    public var costs: [Tensor]?
    public init(kind: Kind, name: String, values: [Tensor], grads: [Tensor?], costs: [Tensor]? = nil) {
        self.kind = kind; self.name = name; self.values = values; self.grads = grads; self.costs = costs
    }
}

public final class PluginRegularizer {
    public let component: Component
    let context: HostContext
    let table: es_regularizer_vtable
    let instance: UnsafeMutableRawPointer?

    public init(_ component: Component, context: HostContext, settings: [String: String] = [:], ownerPath: String = "regularizer") throws {
        guard component.kind == .regularizer, let table = component.regularizerTable else {
            throw PluginLoadError("\(component.id) is a \(component.kind.rawValue), not a regularizer")
        }
        self.component = component; self.context = context; self.table = table
        let params = try ResolvedParams(component: component, settings: settings)
        var inst: UnsafeMutableRawPointer? = nil
        try context.accountant.withOwner(ownerPath) {
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

    /// The terms `loss` returned (outside dry runs) since the last `takeMeanTerm()`.
    public private(set) var termSum = 0.0, termCount = 0
    /// Restores the running sum of the epoch's terms (a checkpoint taken mid-epoch).
    public func restoreTermSum(_ sum: Double, count: Int) { termSum = sum; termCount = count }

    /// The mean term since the last call (nil when `loss` was not called), and starts counting anew.
    public func takeMeanTerm() -> Double? {
        defer { termSum = 0; termCount = 0 }
        return termCount > 0 ? termSum / Double(termCount) : nil
    }

    public var hasLoss: Bool { table.loss != nil }
    public var hasProximal: Bool { table.proximal != nil }
    public func wants(_ kind: RegularizerTarget.Kind) -> Bool { table.targets & (1 << UInt32(kind.rawValue)) != 0 }

    /// Calls `body` with C targets whose views stay valid for the call.
    private func withTargets<T>(_ targets: [RegularizerTarget], _ body: (UnsafeMutablePointer<es_reg_target>, UInt32) throws -> T) rethrows -> T {
        var keep: [UnsafeMutableRawPointer] = []
        defer { keep.forEach { $0.deallocate() } }
        func array(_ views: [es_tensor_view]) -> UnsafeMutablePointer<es_tensor_view> {
            let p = UnsafeMutablePointer<es_tensor_view>.allocate(capacity: max(1, views.count))
            p.initialize(from: views, count: views.count)
            keep.append(UnsafeMutableRawPointer(p))
            return p
        }
        var names: [UnsafeMutablePointer<CChar>] = []
        defer { names.forEach { free($0) } }
        let cTargets = UnsafeMutablePointer<es_reg_target>.allocate(capacity: max(1, targets.count))
        defer { cTargets.deallocate() }
        for (i, t) in targets.enumerated() {
            var c = es_reg_target()
            c.struct_size = UInt32(MemoryLayout<es_reg_target>.size)
            c.kind = t.kind.rawValue
            let n = strdup(t.name)!; names.append(n)
            c.name = UnsafePointer(n)
            c.part_count = UInt32(t.values.count)
            c.values = UnsafePointer(array(t.values.map(\.view)))
            c.grads = array(zip(t.values, t.grads).map { v, g in g?.view ?? esView(shape: v.shape, data: nil) })
            c.costs = t.costs.map { UnsafePointer(array($0.map(\.view))) }
            cTargets[i] = c
        }
        return try body(cTargets, UInt32(targets.count))
    }

    /// The term's value; its gradient is added into the targets' grads.
    public func loss(_ targets: [RegularizerTarget], state: RunState? = nil) throws -> Double {
        guard let fn = table.loss else { throw PluginLoadError("\(component.id) has no loss term") }
        var st = (state ?? context.runState()).c
        var out = 0.0
        try withTargets(targets) { p, n in try context.check("\(component.id): loss") { fn(instance, &st, p, n, &out) } }
        if !context.accountant.isDryRun { termSum += out; termCount += 1 }
        return out
    }

    /// Runs the proximal step on the targets' values in place.
    public func proximal(_ targets: [RegularizerTarget], learningRate: Double, state: RunState? = nil) throws {
        guard let fn = table.proximal else { throw PluginLoadError("\(component.id) has no proximal step") }
        var st = (state ?? context.runState()).c
        try withTargets(targets) { p, n in try context.check("\(component.id): proximal") { fn(instance, &st, p, n, learningRate) } }
    }

    public func setValue(_ name: String, _ value: Double) throws {
        guard let fn = table.set_value else { throw PluginLoadError("\(component.id) has no settable values") }
        try context.check("\(component.id): set \(name)=\(value)") { fn(instance, name, value) }
    }
}
