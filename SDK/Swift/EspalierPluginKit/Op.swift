// Ops in Swift: `ComposedOp` (builds host primitives; the host differentiates them) or `RawOp`
// (own output_shape/forward/backward kernels), optional `FlopsCounting`, `MixedComposedOp` (a
// composed op that stands for several candidates and applies the edge's mixing weights itself,
// `build_mixed`), `Component.op(…)`, and the C thunks of `es_op_vtable`. A composed op's table
// has NULL raw pointers and vice versa; `build_mixed` is non-NULL only for a `MixedComposedOp`.

/// Where an op instance sits (`es_op_config`).
public struct OpConfig: Sendable {
    /// 1, or 2 on the edges of a reduction cell that leave its inputs.
    public var stride: Int
    /// Channels of the input.
    public var inChannels: Int
    /// Channels of the output.
    public var outChannels: Int
    /// Batch norm with learnable scale/shift (false during search).
    public var affine: Bool
    /// The owner path, e.g. "cell3/edge7/sep_conv_5x5".
    public var owner: String

    public init(stride: Int, inChannels: Int, outChannels: Int, affine: Bool, owner: String) {
        self.stride = stride; self.inChannels = inChannels; self.outChannels = outChannels; self.affine = affine; self.owner = owner
    }

    init(_ pointer: UnsafePointer<es_op_config>?) throws {
        guard let pointer else { throw PluginError.invalidArgument("op config is NULL") }
        try checkStructSize(UnsafeRawPointer(pointer), es_op_config.self, "op config")
        let c = pointer.pointee
        self.init(stride: Int(c.stride), inChannels: Int(c.in_channels), outChannels: Int(c.out_channels),
                  affine: c.affine != 0, owner: stringOrEmpty(c.owner))
    }
}

/// What a raw op's backward reads (`ES_OP_SAVES_*`); the host keeps it alive.
public struct OpSaves: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let input = OpSaves(rawValue: UInt32(ES_OP_SAVES_INPUT))
    public static let output = OpSaves(rawValue: UInt32(ES_OP_SAVES_OUTPUT))
}

/// What every op has: a way to be made. Implement `ComposedOp` or `RawOp`, not both.
/// Declare learnable tensors in `init` with `host.declareParam`.
public protocol OpComponent: AnyObject {
    init(host: PluginHost, config: OpConfig, params: ParamValues) throws
}

/// An op made of host primitives: the host differentiates it, counts its memory and runs it in
/// dry runs.
public protocol ComposedOp: OpComponent {
    /// Appends the op to `graph` and returns op(input), using `host.apply`/`host.param`.
    func build(graph: es_graph, input: es_value) throws -> es_value
}

/// A composed op that stands for several candidates of an edge at once (MergeNAS's merged
/// convolution). The search space builds one instance per edge in place of the candidates it
/// covers and calls `buildMixed` with the edge's mixing weights of those candidates; the op
/// applies them itself and the host adds its output to the node unscaled. `build` (inherited from
/// `ComposedOp`) is what a network without mixing weights calls.
public protocol MixedComposedOp: ComposedOp {
    /// Appends the op to `graph` and returns its output for `input` mixed by `weights`, a value of
    /// shape (k) (one weight per covered candidate, differentiable: gradients reach α through it).
    func buildMixed(graph: es_graph, input: es_value, weights: es_value) throws -> es_value
}

/// An op with its own kernels on plain buffers. `forward`/`backward` are never called in a dry run.
public protocol RawOp: OpComponent {
    /// The output shape for an input shape.
    func outputShape(input: [Int]) throws -> [Int]
    /// output = op(input); `params` are views of the declared parameters in declaration order.
    func forward(state: RunState, input: TensorView, params: [TensorView], output: TensorView) throws
    /// Overwrites `dInput` (skip if it has no data) and ADDS into each `dParams[i]` (skip those
    /// without data). `input`/`output` have data only if `saves` asked for them.
    func backward(state: RunState, input: TensorView, output: TensorView, dOutput: TensorView,
                  params: [TensorView], dInput: TensorView, dParams: [TensorView]) throws
}

/// Optional for either form: multiply-adds × 2 of one forward on `input` (cost-aware methods).
public protocol FlopsCounting: OpComponent {
    func flops(input: TensorView) throws -> UInt64
}

final class OpFactory: ComponentFactory {
    let make: (PluginHost, OpConfig, ParamValues) throws -> any OpComponent
    init(id: String, params: [ParamSpec], make: @escaping (PluginHost, OpConfig, ParamValues) throws -> any OpComponent) {
        self.make = make
        super.init(id: id, params: params)
    }
}

typealias OpInstance = Instance<any OpComponent>

extension Component {
    /// A composed op implemented by `type` (the table's raw pointers are NULL; `build_mixed` is
    /// set when `type` is a `MixedComposedOp`).
    public static func op<O: ComposedOp>(_ type: O.Type, id: String, summary: String, params: [ParamSpec] = [],
                                         methods: [DynamicMethod] = []) -> Component {
        let factory = OpFactory(id: id, params: params) { host, config, values in try O(host: host, config: config, params: values) }
        let flops = O.self is any FlopsCounting.Type
        let mixed = O.self is any MixedComposedOp.Type
        return Component(kind: ES_KIND_OP, id: id, summary: summary, params: params, methods: methods, factory: factory) {
            immortalTable(OpThunks.table(composed: true, saves: [], flops: flops, mixed: mixed))
        }
    }

    /// A raw op implemented by `type` (the table's `build` is NULL).
    /// - Parameter saves: what `backward` reads, so the host keeps it alive.
    /// - Parameter recomputable: `forward` gives the same output bit for bit when run again on the
    ///   same input and parameters in one step, so the host may recompute it in backward
    ///   (`--recompute`, ABI 1.7 ES_OP_RECOMPUTABLE); false: it is never run twice.
    public static func op<O: RawOp>(_ type: O.Type, id: String, summary: String, params: [ParamSpec] = [],
                                    methods: [DynamicMethod] = [], saves: OpSaves = [], recomputable: Bool = false) -> Component {
        let factory = OpFactory(id: id, params: params) { host, config, values in try O(host: host, config: config, params: values) }
        let flops = O.self is any FlopsCounting.Type
        return Component(kind: ES_KIND_OP, id: id, summary: summary, params: params, methods: methods, factory: factory) {
            immortalTable(OpThunks.table(composed: false, saves: saves, flops: flops, recomputable: recomputable))
        }
    }
}

/// The C functions of every Swift op.
enum OpThunks {
    static func table(composed: Bool, saves: OpSaves, flops: Bool, mixed: Bool = false, recomputable: Bool = false) -> es_op_vtable {
        var t = es_op_vtable()
        t.struct_size = UInt32(MemoryLayout<es_op_vtable>.size)
        t.saves = saves.rawValue
        t.flags = recomputable ? UInt32(ES_OP_RECOMPUTABLE) : 0
        t.create = { component, services, config, params, count, instance in
            createInstance(services, instance) { host -> OpInstance in
                let factory = try ComponentFactory.from(component, as: OpFactory.self)
                let cfg = try OpConfig(config)
                let values = try ParamValues(params, count: count, declared: factory.params)
                return OpInstance(try factory.make(host, cfg, values), host: host, id: factory.id)
            }
        }
        t.destroy = { instance in OpInstance.release(instance) }
        if composed {
            t.build = { instance, graph, input, output in
                guard let box = OpInstance.from(instance) else { return nullInstanceStatus }
                return box.call("build") {
                    guard let op = box.object as? any ComposedOp else { throw PluginError.internalError("build called on a raw op") }
                    guard let graph, let input, let output else { throw PluginError.invalidArgument("build: graph, input or output is NULL") }
                    output.pointee = try op.build(graph: graph, input: input)
                }
            }
            if mixed {
                t.build_mixed = { instance, graph, input, weights, output in
                    guard let box = OpInstance.from(instance) else { return nullInstanceStatus }
                    return box.call("build_mixed") {
                        guard let op = box.object as? any MixedComposedOp else { throw PluginError.internalError("build_mixed called on an op that takes no mixing weights") }
                        guard let graph, let input, let weights, let output else {
                            throw PluginError.invalidArgument("build_mixed: graph, input, weights or output is NULL")
                        }
                        output.pointee = try op.buildMixed(graph: graph, input: input, weights: weights)
                    }
                }
            }
        } else {
            t.output_shape = { instance, input, output in
                guard let box = OpInstance.from(instance) else { return nullInstanceStatus }
                return box.call("output_shape") {
                    let op = try OpThunks.raw(box)
                    let i = try TensorView(input, "output_shape: input")
                    guard let output else { throw PluginError.invalidArgument("output_shape: output is NULL") }
                    try checkStructSize(UnsafeRawPointer(output), es_tensor_view.self, "output_shape: output")
                    let shape = try op.outputShape(input: i.shape)
                    guard shape.count <= Int(ESPALIER_MAX_RANK), shape.allSatisfy({ $0 >= 0 }) else {
                        throw PluginError.shape("output_shape returned a bad shape \(shape)")
                    }
                    output.pointee.rank = Int32(shape.count)
                    withUnsafeMutableBytes(of: &output.pointee.shape) { bytes in
                        let dims = bytes.bindMemory(to: Int64.self)
                        for k in 0..<dims.count { dims[k] = k < shape.count ? Int64(shape[k]) : 0 }
                    }
                }
            }
            t.forward = { instance, state, input, params, paramCount, output in
                guard let box = OpInstance.from(instance) else { return nullInstanceStatus }
                return box.call("forward") {
                    let op = try OpThunks.raw(box)
                    try op.forward(state: try RunState(state), input: try TensorView(input, "forward: input"),
                                   params: try OpThunks.views(params, paramCount, "forward: params"),
                                   output: try TensorView(output, "forward: output"))
                }
            }
            t.backward = { instance, state, input, output, dOutput, params, paramCount, dInput, dParams in
                guard let box = OpInstance.from(instance) else { return nullInstanceStatus }
                return box.call("backward") {
                    let op = try OpThunks.raw(box)
                    try op.backward(state: try RunState(state), input: try TensorView(input, "backward: input"),
                                    output: try TensorView(output, "backward: output"),
                                    dOutput: try TensorView(dOutput, "backward: d_output"),
                                    params: try OpThunks.views(params, paramCount, "backward: params"),
                                    dInput: try TensorView(dInput, "backward: d_input"),
                                    dParams: try OpThunks.views(dParams.map { UnsafePointer($0) }, paramCount, "backward: d_params"))
                }
            }
        }
        if flops {
            t.flops = { instance, input, out in
                guard let box = OpInstance.from(instance) else { return nullInstanceStatus }
                return box.call("flops") {
                    guard let op = box.object as? any FlopsCounting else { throw PluginError.unsupported("this op does not count FLOPs") }
                    guard let out else { throw PluginError.invalidArgument("flops: output pointer is NULL") }
                    out.pointee = try op.flops(input: try TensorView(input, "flops: input"))
                }
            }
        }
        return t
    }

    static func raw(_ box: OpInstance) throws -> any RawOp {
        guard let op = box.object as? any RawOp else { throw PluginError.internalError("a raw-op function was called on a composed op") }
        return op
    }

    /// Views of a C array of `count` tensor views.
    static func views(_ p: UnsafePointer<es_tensor_view>?, _ count: UInt32, _ what: String) throws -> [TensorView] {
        guard count > 0 else { return [] }
        guard let p else { throw PluginError.invalidArgument("\(what): count is \(count) but the array is NULL") }
        return try (0..<Int(count)).map { try TensorView(p + $0, "\(what)[\($0)]") }
    }
}
