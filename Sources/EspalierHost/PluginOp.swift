// A plugin op instance inside the engine: the one owner of the plugin's instance handle
// (destroyed in deinit), its declared parameters, and `callAsFunction`, which applies the op in
// a Graph. Composed ops are built from host primitives (the engine differentiates them); raw ops
// get host-allocated buffers, run only outside dry runs, and are differentiated by their own
// backward kernel, wired into the tape here. Every composed build is traced into the op's IR
// (OpIR.swift): the first per input shape is kept, every later one must have its structure.

import CEspalierSDK
import EspalierCore
import Foundation

public struct OpConfig: Sendable {
    public var inChannels: Int
    public var outChannels: Int
    public var stride: Int
    public var affine: Bool
    public init(inChannels: Int, outChannels: Int, stride: Int = 1, affine: Bool = false) {
        self.inChannels = inChannels; self.outChannels = outChannels; self.stride = stride; self.affine = affine
    }
}

public final class PluginOp {
    public let component: Component
    let context: HostContext
    let table: es_op_vtable
    let instance: UnsafeMutableRawPointer?
    let declared: [ParamHandle]
    public let ownerPath: String
    let owner: Int32
    /// Every parameter with the text it was created with (defaults included).
    public let settings: [String: String]
    /// The channels and stride it was created with (the stride is part of its IR's key).
    public let config: OpConfig
    public var stride: Int { config.stride }
    /// Each channel mask the op asked its width for in create (`channel_width`), with its searched
    /// width: the masks whose exported form the host can build at other widths.
    public let maskWidths: [String: Int]
    /// The IR of its latest build on a new input shape in a run (nil before one).
    public private(set) var latestIR: OpIR?
    /// The IR of each build so far, by (input shape, training, mixed): later builds are checked against it.
    private var builds: [IRKey: OpIR] = [:]
    /// IRs traced on their own (`ir(inputShape:training:)`), by the same key.
    private var traces: [IRKey: OpIR] = [:]
    /// Whether its builds run the IR's fused units fused (OpIR+Fusion.swift); ESPALIER_FUSION=0
    /// runs every primitive on its own, to measure what fusion gives.
    public var fuses = PluginOp.fusionEnabled
    static let fusionEnabled = ProcessInfo.processInfo.environment["ESPALIER_FUSION"] != "0"

    private struct IRKey: Hashable {
        let shape: [Int]
        let training: Bool
        let mixed: Bool
    }

    /// Makes an instance under owner path `ownerPath` (e.g. "cell0/edge3/swish"); with
    /// `exportedWidths`, its channel masks are built at those widths (by mask; `channel_width`).
    public init(_ component: Component, context: HostContext, config: OpConfig, settings: [String: String] = [:], ownerPath: String,
                exportedWidths: [String: Int]? = nil) throws {
        guard component.kind == .op, let table = component.opTable else { throw PluginLoadError("\(component.id) is a \(component.kind.rawValue), not an op") }
        self.component = component
        self.context = context
        self.table = table
        self.ownerPath = ownerPath
        self.config = config
        let params = try ResolvedParams(component: component, settings: settings)
        self.settings = params.texts
        let acc = context.accountant
        owner = acc.owner(ownerPath)
        var cfg = es_op_config()
        cfg.struct_size = UInt32(MemoryLayout<es_op_config>.size)
        cfg.stride = Int32(config.stride)
        cfg.in_channels = Int64(config.inChannels)
        cfg.out_channels = Int64(config.outChannels)
        cfg.affine = config.affine ? 1 : 0
        var inst: UnsafeMutableRawPointer? = nil
        context.declaring = []
        context.creating = (exportedWidths, [:])
        defer { context.declaring = nil; context.creating = nil }
        try acc.withOwnerID(owner) {
            try ownerPath.withCString { o in
                cfg.owner = o
                try context.check("\(component.id): create at \(ownerPath)") {
                    table.create!(component.descriptor, context.services, &cfg, params.values, UInt32(params.count), &inst)
                }
            }
        }
        instance = inst
        declared = context.declaring ?? []
        maskWidths = context.creating?.asked ?? [:]
    }

    deinit { table.destroy?(instance) }

    /// Learnable parameters (buffers excluded), in declaration order.
    public var parameters: [Parameter] { declared.filter { !$0.isBuffer }.map(\.parameter) }
    public var buffers: [Tensor] { declared.filter(\.isBuffer).map(\.parameter.value) }
    public var isComposed: Bool { table.build != nil }
    /// May its forward run again in backward (recomputation)? Composed ops always (the host
    /// replays their primitives); an op with its own kernels only when it declares
    /// `ES_OP_RECOMPUTABLE` (ABI 1.7), else it is kept as stored.
    public var isRecomputable: Bool { component.isRecomputableOp }

    /// y = op(x) in `g`; `state` nil: the context's current run state.
    public func callAsFunction(_ g: Graph, _ x: Variable, state: RunState? = nil) throws -> Variable {
        try g.accountant.withOwnerID(owner) {
            isComposed ? try buildComposed(g, x).0 : try applyRaw(g, x, state: state ?? context.runState())
        }
    }

    /// True for ops that apply an edge's mixing weights themselves (`build_mixed`, MergeNAS).
    public var takesMixingWeights: Bool { table.build_mixed != nil }

    /// y = op(x) with the edge's mixing weights for the candidates this op stands for.
    public func callAsFunction(_ g: Graph, _ x: Variable, mixingWeights w: Variable) throws -> Variable {
        guard let fn = table.build_mixed else { throw PluginLoadError("\(component.id) does not take mixing weights (no build_mixed)") }
        return try g.accountant.withOwnerID(owner) {
            try buildComposed(g, x, extra: w) { [instance] build, input, extra, out in fn(instance, build, input, extra, out) }.0
        }
    }

    private func buildComposed(_ g: Graph, _ x: Variable, sink: (node: Int, sink: ForwardSink)? = nil) throws -> (Variable, sinkTaken: Bool) {
        try buildComposed(g, x, extra: nil, sink: sink) { [table, instance] build, input, _, out in table.build!(instance, build, input, out) }
    }

    /// acc += scale·op(x), in a forward without tape (a node's sum of its candidates). Where the
    /// op's first build on this shape ended in a batch norm whose output nothing else in the op
    /// reads, that batch norm adds into acc as it normalises, and the output is never stored
    /// (a pass over it and its memory saved); else op(x) is made and added. The same floats either way.
    public func accumulate(_ g: Graph, _ x: Variable, into acc: Tensor, scale: Float, state: RunState? = nil) throws {
        precondition(!g.isRecording, "accumulate is for a forward without tape")
        try g.accountant.withOwnerID(owner) {
            let y: Variable
            if isComposed, let node = lastBatchNorm(IRKey(shape: x.shape, training: g.training, mixed: false)) {
                let (out, taken) = try buildComposed(g, x, sink: (node, ForwardSink(target: acc, scale: scale)))
                if taken { return }
                y = out   // the batch norm did not run as that node: the build differs, and said so above
            } else {
                y = isComposed ? try buildComposed(g, x).0 : try applyRaw(g, x, state: state ?? context.runState())
            }
            guard y.shape == acc.shape else { throw EspalierError.shapeMismatch("\(component.id) made \(y.shape); the sum it is added into is \(acc.shape)") }
            if g.computing { Kernels.axpy(scale, y.value.ptr, acc.ptr, count: acc.count) }
        }
    }

    /// Whether a build of it viewed its output (`value_view`): its output is then always stored.
    private var viewsOutput = false

    /// The node of the IR known for `key` that makes the op's output, when it is a batch norm and no
    /// other node reads that output (and the op does not view it).
    private func lastBatchNorm(_ key: IRKey) -> Int? {
        guard !viewsOutput, let ir = builds[key], case .node(let k) = ir.values[ir.output].source, SeparableUnitRule.isBatchNormPrimitive(ir.nodes[k].primitive),
              !ir.nodes.contains(where: { $0.inputs.contains(ir.output) }) else { return nil }
        return k
    }

    /// Builds the op in `g` and checks the build against the first one on this input shape.
    private func buildComposed(_ g: Graph, _ x: Variable, extra: Variable?, sink: (node: Int, sink: ForwardSink)? = nil,
                               _ call: (es_graph, es_value, es_value?, UnsafeMutablePointer<es_value?>) -> es_status) throws -> (Variable, sinkTaken: Bool) {
        let key = IRKey(shape: x.shape, training: g.training, mixed: extra != nil)
        let known = builds[key]
        // A shape seen before is only compared (no IR made, no kept bytes tracked): this runs every step.
        let (y, recorder, output, sinkTaken) = try traceBuild(g, x, extra: extra, traceOnly: false, trackKept: known == nil, sink: sink, call)
        if let known {
            guard recorder.matches(known, output: output) else {
                let ir = recorder.ir(op: component.id, stride: stride, training: g.training, output: output)
                throw PluginCallError(status: ES_ERROR_INVALID_ARGUMENT, context: "\(component.id): build at \(ownerPath)",
                                      message: "the build on input \(PluginShape.text(x.shape)) differs from its first: \(known.difference(from: ir)); "
                                      + "a composed op must build the same primitives for the same input shape (read settings in create, not in build)")
            }
        } else {
            let ir = recorder.ir(op: component.id, stride: stride, training: g.training, output: output)
            builds[key] = ir
            latestIR = ir
        }
        return (y, sinkTaken)
    }

    /// Runs the plugin's build in `g`, recording it; returns the output, the record and the output's value index.
    private func traceBuild(_ g: Graph, _ x: Variable, extra: Variable?, traceOnly: Bool, trackKept: Bool = true, sink: (node: Int, sink: ForwardSink)? = nil,
                            _ call: (es_graph, es_value, es_value?, UnsafeMutablePointer<es_value?>) -> es_status) throws -> (Variable, OpIRRecorder, Int, Bool) {
        let build = GraphBuild(graph: g, ownerPath: ownerPath, traceOnly: traceOnly, trackKept: trackKept)
        build.fuses = fuses
        build.sink = sink
        let input = build.leaf(x, .input)
        let extraHandle = extra.map { build.leaf($0, .mixingWeights) }
        var out: es_value? = nil
        let previous = GraphBuild.current
        GraphBuild.current = build
        defer { GraphBuild.current = previous }
        try context.check("\(component.id): build at \(ownerPath)") { call(build.opaque, input, extraHandle, &out) }
        if let failure = build.failure {
            throw PluginCallError(status: ES_ERROR_INVALID_ARGUMENT, context: "\(component.id): build at \(ownerPath)",
                                  message: failure + " (the op went on after this error)")
        }
        let y = try build.value(out), index = try build.index(out)
        viewsOutput = viewsOutput || build.viewed.contains(index)
        build.values.removeAll()   // what the tape does not keep is freed now, before the IR counts what stays
        return (y, build.recorder, index, build.sinkTaken)
    }

    /// The IR of its latest build, else traced on a small input of its channels (2, C, 8, 8).
    public func currentIR() throws -> OpIR { try latestIR ?? ir(inputShape: [2, config.inChannels, 8, 8]) }

    /// The op's IR on an input of `inputShape` (N, C, H, W), traced once in a dry run of its own
    /// (nothing computed or allocated; a gate the run lacks stands in as a value). A raw op is one
    /// opaque node with its declared output shape and `saves`.
    public func ir(inputShape: [Int], training: Bool = true) throws -> OpIR {
        let key = IRKey(shape: inputShape, training: training, mixed: false)
        if let hit = traces[key] { return hit }
        guard inputShape.count == 4, PluginShape.problem(inputShape) == nil, inputShape.allSatisfy({ $0 > 0 }) else {
            throw PluginLoadError("an op's IR needs an input shape N,C,H,W of positive sizes; got \(PluginShape.text(inputShape))")
        }
        let dry = MemoryAccountant(mode: .dryRun)
        let g = Graph(accountant: dry)
        g.training = training
        let x = try g.leaf(Tensor(shape: inputShape, category: .activations, accountant: dry))
        let ir: OpIR = try dry.withOwner(ownerPath) {
            guard isComposed else { return try rawIR(g, x) }
            guard let build = table.build else {
                throw PluginLoadError("\(component.id) builds only with an edge's mixing weights (build_mixed): it has no IR of its own")
            }
            let instance = self.instance
            let (y, recorder, output, _) = try traceBuild(g, x, extra: nil, traceOnly: true) { b, input, _, out in build(instance, b, input, out) }
            return withExtendedLifetime(y) { recorder.ir(op: component.id, stride: stride, training: g.training, output: output) }   // its output stays
        }
        traces[key] = ir
        return ir
    }

    /// A raw op as one opaque node: its parameters and buffers as leaves, its declared output.
    private func rawIR(_ g: Graph, _ x: Variable) throws -> OpIR {
        let recorder = OpIRRecorder()
        recorder.leaf(.input, shape: x.shape)
        let prefix = ownerPath + "/"
        for d in declared {
            let name = d.parameter.name.hasPrefix(prefix) ? String(d.parameter.name.dropFirst(prefix.count)) : d.parameter.name
            recorder.leaf(d.isBuffer ? .buffer(name) : .parameter(name), shape: d.parameter.shape)
        }
        let before = g.accountant.currentTotal
        let y = try applyRaw(g, x, state: context.runState())
        recorder.node("raw", inputs: Array(0...declared.count), attributes: [:], output: y.value, flops: 0, keptBytes: g.accountant.currentTotal - before)
        return recorder.ir(op: component.id, stride: stride, training: g.training, output: declared.count + 1, rawSaves: table.saves)
    }

    private func applyRaw(_ g: Graph, _ x: Variable, state: RunState) throws -> Variable {
        let table = self.table, instance = self.instance, context = self.context, id = component.id, owner = ownerPath
        var inShape = esView(shape: x.shape, data: nil)
        var outShape = esView(shape: [], data: nil)
        try context.check("\(component.id): output_shape of \(x.shape)") { table.output_shape!(instance, &inShape, &outShape) }
        let yShape = outShape.shapeArray
        // Checked before anything is allocated: an overflowing element count must never reach a kernel.
        if let why = outShape.rank <= 0 || outShape.rank > ESPALIER_MAX_RANK ? "rank \(outShape.rank)" : PluginShape.problem(yShape) {
            throw PluginCallError(status: ES_ERROR_SHAPE, context: "\(component.id): output_shape at \(ownerPath)",
                                  message: "for input \(PluginShape.text(x.shape)) it returned \(PluginShape.text(yShape)), which has \(why); nothing was allocated")
        }
        let y = try g.output(yShape)
        let params = declared.map(\.parameter)
        var cState = state.c
        cState.training = g.training ? 1 : 0
        cState.dry_run = g.computing ? 0 : 1
        if g.computing {
            var xv = x.value.view, yv = y.view
            var pv = params.map { $0.value.view }
            try context.check("\(component.id): forward at \(ownerPath)") {
                pv.withUnsafeMutableBufferPointer { table.forward!(instance, &cState, &xv, $0.baseAddress, UInt32(params.count), &yv) }
            }
        }
        let savesInput = table.saves & UInt32(ES_OP_SAVES_INPUT) != 0, savesOutput = table.saves & UInt32(ES_OP_SAVES_OUTPUT) != 0
        let xSaved = savesInput ? x.value : nil, ySaved = savesOutput ? y : nil
        let xShape = x.shape
        let paramVars = declared.map { $0.isBuffer ? g.constant($0.parameter.value) : g.param($0.parameter) }
        return g.record(y, inputs: [x] + paramVars) { [unowned g] dY, ctx in
            let dX = ctx.needs(0) ? try g.gradTensor(xShape) : nil
            var dParams: [es_tensor_view] = []
            for i in 0..<params.count {
                let pg = ctx.needs(1 + i) ? try ctx.parameterGrad(1 + i) : nil
                dParams.append(pg?.view ?? esView(shape: params[i].shape, data: nil))
            }
            if ctx.computing {
                var xv = xSaved?.view ?? esView(shape: xShape, data: nil)
                var yv = ySaved?.view ?? esView(shape: yShape, data: nil)
                var dyv = dY.view
                var dxv = dX?.view ?? esView(shape: xShape, data: nil)
                var pv = params.map { $0.value.view }
                var st = cState
                try context.check("\(id): backward at \(owner)") {
                    pv.withUnsafeMutableBufferPointer { p in
                        dParams.withUnsafeMutableBufferPointer { dp in
                            table.backward!(instance, &st, &xv, &yv, &dyv, p.baseAddress, UInt32(params.count), &dxv, dp.baseAddress)
                        }
                    }
                }
            }
            if let dX { try ctx.accumulate(0, dX) }
        }
    }
}
