// A plugin gate instance inside the engine: logits (rows, cols) → weights (rows, cols) as a
// differentiable op whose backward is the plugin's (straight-through estimators included),
// plus the `active` mask that tells the supernet which candidates need not run at all.

import CEspalierSDK
import EspalierCore
import Foundation

public enum GateGranularity: Int32, Sendable { case ops = 1, channels = 2, inputs = 3 }

public final class PluginGate {
    public let component: Component
    let context: HostContext
    let table: es_gate_vtable
    let instance: UnsafeMutableRawPointer?
    public let rows: Int, cols: Int
    public let ownerPath: String

    public init(_ component: Component, context: HostContext, granularity: GateGranularity, rows: Int, cols: Int,
                settings: [String: String] = [:], ownerPath: String) throws {
        guard component.kind == .gate, let table = component.gateTable else { throw PluginLoadError("\(component.id) is a \(component.kind.rawValue), not a gate") }
        guard table.granularities & (1 << UInt32(granularity.rawValue)) != 0 else {
            throw PluginLoadError("\(component.id) does not support \(granularity) gating")
        }
        self.component = component; self.context = context; self.table = table
        self.rows = rows; self.cols = cols; self.ownerPath = ownerPath
        let params = try ResolvedParams(component: component, settings: settings)
        var cfg = es_gate_config()
        cfg.struct_size = UInt32(MemoryLayout<es_gate_config>.size)
        cfg.granularity = granularity.rawValue
        cfg.rows = Int64(rows); cfg.cols = Int64(cols)
        var inst: UnsafeMutableRawPointer? = nil
        try context.accountant.withOwner(ownerPath) {
            try ownerPath.withCString { o in
                cfg.owner = o
                try context.check("\(component.id): create at \(ownerPath)") {
                    table.create!(component.descriptor, context.services, &cfg, params.values, UInt32(params.count), &inst)
                }
            }
        }
        instance = inst
    }

    deinit { table.destroy?(instance) }

    public var isSampled: Bool { table.flags & UInt32(ES_GATE_SAMPLED) != 0 }
    public var isHard: Bool { table.flags & UInt32(ES_GATE_HARD) != 0 }

    /// Sets a named scalar such as "tau".
    public func setValue(_ name: String, _ value: Double) throws {
        guard let fn = table.set_value else { throw PluginLoadError("\(component.id) has no settable values") }
        try context.check("\(component.id): set \(name)=\(value)") { fn(instance, name, value) }
    }

    /// weights = gate(logits); `active[i] == 0` marks candidates that need not run. In a dry run
    /// nothing is computed and every candidate counts as active (an upper bound on memory) —
    /// except for a sampled gate in a run that is itself a dry run (a prediction): there the
    /// plugin samples once from zero logits on scratch buffers, and `active` is its pattern, whose
    /// count per row says how many candidates a step runs (the caller picks which: the costliest).
    /// `state` nil: the context's current run state (`HostContext.runState`).
    public func callAsFunction(_ g: Graph, _ logits: Variable, state: RunState? = nil) throws -> (weights: Variable, active: [UInt8]) {
        guard logits.value.count == rows * cols else {
            throw EspalierError.shapeMismatch("\(component.id): logits \(logits.shape) for a (\(rows), \(cols)) gate")
        }
        let table = self.table, instance = self.instance, context = self.context, id = component.id, logitsValue = logits.value
        let shape = [rows, cols]
        let w = try g.output(shape)
        var active = [UInt8](repeating: 1, count: rows * cols)
        var st = (state ?? context.runState()).c
        st.training = g.training ? 1 : 0
        st.dry_run = g.computing ? 0 : 1
        if g.computing {
            var lv = esView(shape: shape, data: logits.value.ptr), wv = w.view
            try context.check("\(id): forward") {
                active.withUnsafeMutableBufferPointer { table.forward!(instance, &st, &lv, &wv, $0.baseAddress) }
            }
            try checkActive(active) { w[$0] }
        } else if isSampled && context.accountant.isDryRun {
            active = try sampledPattern(state: st)
        }
        let weights = g.record(w, inputs: [logits]) { [unowned g] dW, ctx in
            let dL = try g.gradTensor(shape, zeroed: true)
            if ctx.computing {
                var lv = esView(shape: shape, data: logitsValue.ptr), wv = w.view, dwv = esView(shape: shape, data: dW.ptr), dlv = dL.view
                var st2 = st
                try context.check("\(id): backward") { table.backward!(instance, &st2, &lv, &wv, &dwv, &dlv) }
            }
            try ctx.accumulate(0, dL.reshaped(logitsValue.shape))
        }
        return (weights, active)
    }

    /// A prediction's stand-in for a sampled gate's `active`: one real forward on zero logits in
    /// scratch buffers (outside the accountant), with the run's state. Only ever called in a run
    /// whose accountant is a dry run, so the draws it takes from the host RNG are the prediction's.
    func sampledPattern(state: es_run_state) throws -> [UInt8] {
        var active = [UInt8](repeating: 1, count: rows * cols)
        var logits = [Float](repeating: 0, count: rows * cols), weights = logits
        var st = state
        st.dry_run = 0
        let table = self.table, instance = self.instance, shape = [rows, cols]
        try logits.withUnsafeMutableBufferPointer { l in
            try weights.withUnsafeMutableBufferPointer { w in
                var lv = esView(shape: shape, data: l.baseAddress), wv = esView(shape: shape, data: w.baseAddress)
                try context.check("\(component.id): forward (sampling a prediction's pattern)") {
                    active.withUnsafeMutableBufferPointer { table.forward!(instance, &st, &lv, &wv, $0.baseAddress) }
                }
            }
        }
        try checkActive(active) { weights[$0] }
        return active
    }

    /// Only a hard gate (ES_GATE_HARD) may mark a candidate whose weight is not 0 inactive: every
    /// candidate of a soft gate contributes to the result and to the gradient, so skipping one
    /// would silently change both. A soft gate may skip candidates of weight exactly 0.
    func checkActive(_ active: [UInt8], weight: (Int) -> Float) throws {
        guard !isHard, let i = active.indices.first(where: { active[$0] == 0 && weight($0) != 0 }) else { return }
        throw PluginCallError(status: ES_ERROR_INVALID_ARGUMENT, context: "\(component.id): forward at \(ownerPath)",
                              message: "the gate marked candidate \(i % cols) of row \(i / cols) inactive (active = 0) although its weight is \(weight(i)); "
                                  + "\(component.id) is not flagged ES_GATE_HARD, and only a hard gate may skip candidates whose weight is not 0: "
                                  + "flag it ES_GATE_HARD (straight-through), or write active = 1 for them")
    }
}
