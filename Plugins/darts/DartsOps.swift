// The 8 DARTS candidate ops (Liu et al., 2019, operations.py) as COMPOSED ops: each `build`
// appends host primitives, so the host differentiates them, counts their memory and runs them in
// dry runs. Semantics follow the reference supernets.py exactly:
//   none            zeros (N, C, ⌈H/s⌉, ⌈W/s⌉)
//   max_pool_3x3    max_pool2d k3 s p1           (+ BN(affine=False) in the search network)
//   avg_pool_3x3    avg_pool2d k3 s p1, count_include_pad=False   (+ BN likewise)
//   skip_connect    identity (s=1) | FactorizedReduce (s=2)
//   sep_conv_k      (ReLU → dw k×k → 1×1 → BN) twice, the stride on the first depthwise conv
//   dil_conv_k      ReLU → dw k×k dilation 2 → 1×1 → BN
// `affine` of the op config selects the search network (0: BN without γ/β, BN after pools) or
// the discrete evaluation network (1: BN with γ/β, no BN after pools).
// `flops` counts as the host's engine does in evaluation mode: convolutions 2·multiply-adds,
// pooling k² per output, batch norm 2 per element; ReLU, zeros, identity, crop and concat free.

import EspalierPluginKit

// MARK: - Shared pieces

/// The checked DARTS config: C_in == C_out = C, stride 1 or 2.
struct DartsShape {
    let channels: Int
    let stride: Int
    let affine: Bool

    init(_ config: OpConfig, id: String) throws {
        guard config.inChannels > 0, config.inChannels == config.outChannels else {
            throw PluginError.invalidArgument(
                "\(id): DARTS ops keep the channel count (C_in == C_out); got C_in \(config.inChannels), C_out \(config.outChannels) at '\(config.owner)'")
        }
        guard config.stride == 1 || config.stride == 2 else {
            throw PluginError.invalidArgument("\(id): stride must be 1 or 2; got \(config.stride) at '\(config.owner)'")
        }
        channels = config.inChannels
        stride = config.stride
        affine = config.affine
    }
}

/// Checks that `input` is (N, C, H, W) with the configured C; returns its shape.
@discardableResult
func checkInput(_ host: PluginHost, _ input: es_value, channels: Int, id: String) throws -> [Int] {
    let shape = try host.view(input).shape
    guard shape.count == 4, shape[1] == channels else {
        throw PluginError.shape("\(id): expects input (N, \(channels), H, W); got \(shape)")
    }
    return shape
}

/// Output side of a k×k conv or pool: ⌊(n + 2p − d(k−1) − 1)/s⌋ + 1.
func convOut(_ n: Int, kernel: Int, stride: Int, padding: Int, dilation: Int = 1) -> Int {
    (n + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1
}

/// A bias-free conv2d with its weight (Cout, Cin/groups, k, k), U(±1/√fan-in) like PyTorch's default.
struct Conv {
    let weight: es_param
    let cIn: Int, cOut: Int, kernel: Int, stride: Int, padding: Int, dilation: Int, groups: Int

    init(_ host: PluginHost, _ name: String, cIn: Int, cOut: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
         dilation: Int = 1, groups: Int = 1) throws {
        self.cIn = cIn; self.cOut = cOut; self.kernel = kernel; self.stride = stride
        self.padding = padding; self.dilation = dilation; self.groups = groups
        let fanIn = (cIn / groups) * kernel * kernel
        weight = try host.declareParam(name, shape: [cOut, cIn / groups, kernel, kernel], initializer: .uniformFanIn(fanIn))
    }

    func apply(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        let w = try host.param(graph, weight)
        return try host.apply(graph, "conv2d", [x, w], attrs: [
            "stride": Double(stride), "padding": Double(padding), "dilation": Double(dilation), "groups": Double(groups),
        ])
    }

    /// conv(relu(x)): the host's `relu_conv2d` (ABI 1.2), whose depthwise path applies the ReLU
    /// inside the kernel so relu(x) is never stored; on an older host, relu then conv2d.
    func applyReLU(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        guard host.hasPrimitive("relu_conv2d") else { return try apply(host, graph, relu(host, graph, x)) }
        let w = try host.param(graph, weight)
        return try host.apply(graph, "relu_conv2d", [x, w], attrs: [
            "stride": Double(stride), "padding": Double(padding), "dilation": Double(dilation), "groups": Double(groups),
        ])
    }

    /// Output (H, W) for input (H, W), and 2·multiply-adds for batch `n`.
    func cost(n: Int, h: Int, w: Int) -> (h: Int, w: Int, flops: UInt64) {
        let ho = convOut(h, kernel: kernel, stride: stride, padding: padding, dilation: dilation)
        let wo = convOut(w, kernel: kernel, stride: stride, padding: padding, dilation: dilation)
        let macs = n * cOut * ho * wo * (cIn / groups) * kernel * kernel
        return (ho, wo, UInt64(max(0, 2 * macs)))
    }
}

/// BatchNorm2d (momentum 0.1, eps 1e-5): running statistics as buffers; γ (ones) and β (zeros)
/// only when affine. Weight decay stays on for γ/β, as DARTS applies it to every weight.
/// Declared in PyTorch's order: weight, bias, running_mean, running_var.
struct BatchNorm {
    let gamma: es_param?
    let beta: es_param?
    let runningMean: es_param
    let runningVar: es_param

    init(_ host: PluginHost, _ prefix: String, channels: Int, affine: Bool) throws {
        if affine {
            gamma = try host.declareParam(prefix + ".weight", shape: [channels], initializer: .ones)
            beta = try host.declareParam(prefix + ".bias", shape: [channels], initializer: .zeros)
        } else {
            gamma = nil
            beta = nil
        }
        runningMean = try host.declareParam(prefix + ".running_mean", shape: [channels], initializer: .zeros, flags: .buffer)
        runningVar = try host.declareParam(prefix + ".running_var", shape: [channels], initializer: .ones, flags: .buffer)
    }

    /// 2 per element (normalise with fixed statistics, as at inference).
    static func flops(elements: Int) -> UInt64 { UInt64(2 * elements) }

    func apply(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        var inputs = [x, try host.param(graph, runningMean), try host.param(graph, runningVar)]
        if let gamma, let beta {
            inputs.append(try host.param(graph, gamma))
            inputs.append(try host.param(graph, beta))
        }
        return try host.apply(graph, "batch_norm", inputs, attrs: ["momentum": 0.1, "eps": 1e-5])
    }
}

func relu(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
    try host.apply(graph, "relu", [x])
}

/// Rank-4 input dimensions for `flops`.
func nchw(_ input: TensorView, id: String) throws -> (n: Int, c: Int, h: Int, w: Int) {
    guard input.rank == 4 else { throw PluginError.shape("\(id): flops expects input (N, C, H, W); got \(input.shape)") }
    return (input.dim(0), input.dim(1), input.dim(2), input.dim(3))
}

// MARK: - none

/// The `none` op: zeros of the output shape; no parameters, no gradient.
final class NoneOp: ComposedOp, FlopsCounting {
    static let id = "espalier.op.none/1"
    let host: PluginHost
    let shape: DartsShape

    init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        self.host = host
        shape = try DartsShape(config, id: Self.id)
    }

    func build(graph: es_graph, input: es_value) throws -> es_value {
        try checkInput(host, input, channels: shape.channels, id: Self.id)
        return try host.apply(graph, "zeros_like", [input], attrs: ["stride": Double(shape.stride)])
    }

    func flops(input: TensorView) throws -> UInt64 { 0 }
}

// MARK: - pools

/// 3×3 max or average pooling with padding 1; followed by BN(affine=False) in the search network.
class PoolOp {
    let host: PluginHost
    let shape: DartsShape
    let bn: BatchNorm?
    let primitive: String
    let id: String

    init(host: PluginHost, config: OpConfig, id: String, primitive: String) throws {
        self.host = host
        self.id = id
        self.primitive = primitive
        shape = try DartsShape(config, id: id)
        // DARTS MixedOp appends BatchNorm2d(C, affine=False) to pools during search; the evaluation
        // network (affine) uses the bare pool.
        bn = shape.affine ? nil : try BatchNorm(host, "bn", channels: shape.channels, affine: false)
    }

    func buildPool(graph: es_graph, input: es_value) throws -> es_value {
        try checkInput(host, input, channels: shape.channels, id: id)
        var attrs: KeyValuePairs<String, Double> = ["kernel": 3, "stride": Double(shape.stride), "padding": 1]
        if primitive == "avg_pool2d" {
            attrs = ["kernel": 3, "stride": Double(shape.stride), "padding": 1, "count_include_pad": 0]
        }
        let y = try host.apply(graph, primitive, [input], attrs: attrs)
        guard let bn else { return y }
        return try bn.apply(host, graph, y)
    }

    /// 9 per output (the 3×3 window), plus the search network's BN.
    func poolFlops(input: TensorView) throws -> UInt64 {
        let d = try nchw(input, id: id)
        let outputs = d.n * d.c * convOut(d.h, kernel: 3, stride: shape.stride, padding: 1) * convOut(d.w, kernel: 3, stride: shape.stride, padding: 1)
        return UInt64(9 * outputs) + (bn == nil ? 0 : BatchNorm.flops(elements: outputs))
    }
}

final class MaxPoolOp: PoolOp, ComposedOp, FlopsCounting {
    static let id = "espalier.op.max_pool_3x3/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, id: Self.id, primitive: "max_pool2d")
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildPool(graph: graph, input: input) }
    func flops(input: TensorView) throws -> UInt64 { try poolFlops(input: input) }
}

final class AvgPoolOp: PoolOp, ComposedOp, FlopsCounting {
    static let id = "espalier.op.avg_pool_3x3/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, id: Self.id, primitive: "avg_pool2d")
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildPool(graph: graph, input: input) }
    func flops(input: TensorView) throws -> UInt64 { try poolFlops(input: input) }
}

// MARK: - skip_connect

/// Identity at stride 1; FactorizedReduce at stride 2: ReLU, then two 1×1 stride-2 convs
/// (C → C/2 each), the second on the input shifted by one pixel (x[:, :, 1:, 1:]), concatenated
/// along channels, then BN.
final class SkipConnectOp: ComposedOp, FlopsCounting {
    static let id = "espalier.op.skip_connect/1"
    let host: PluginHost
    let shape: DartsShape
    let conv1: Conv?
    let conv2: Conv?
    let bn: BatchNorm?

    init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        self.host = host
        shape = try DartsShape(config, id: Self.id)
        if shape.stride == 1 {
            conv1 = nil; conv2 = nil; bn = nil
        } else {
            let c = shape.channels
            guard c % 2 == 0 else {
                throw PluginError.invalidArgument(
                    "\(Self.id): stride 2 (FactorizedReduce) needs an even channel count (two halves of C/2); got C = \(c) at '\(config.owner)'")
            }
            conv1 = try Conv(host, "conv_1.weight", cIn: c, cOut: c / 2, kernel: 1, stride: 2)
            conv2 = try Conv(host, "conv_2.weight", cIn: c, cOut: c / 2, kernel: 1, stride: 2)
            bn = try BatchNorm(host, "bn", channels: c, affine: shape.affine)
        }
    }

    func build(graph: es_graph, input: es_value) throws -> es_value {
        let s = try checkInput(host, input, channels: shape.channels, id: Self.id)
        guard let conv1, let conv2, let bn else { return input }  // identity
        guard s[2] >= 2, s[3] >= 2, s[2] % 2 == 0, s[3] % 2 == 0 else {
            throw PluginError.shape("\(Self.id): stride 2 (FactorizedReduce) needs an even H and W (the two shifted halves must align); got \(s)")
        }
        let x = try relu(host, graph, input)
        let a = try conv1.apply(host, graph, x)
        let shifted = try host.apply(graph, "crop", [x], attrs: ["top": 1, "left": 1])
        let b = try conv2.apply(host, graph, shifted)
        let cat = try host.apply(graph, "concat_channels", [a, b])
        return try bn.apply(host, graph, cat)
    }

    func flops(input: TensorView) throws -> UInt64 {
        guard let conv1, let conv2 else { return 0 }
        let d = try nchw(input, id: Self.id)
        let a = conv1.cost(n: d.n, h: d.h, w: d.w), b = conv2.cost(n: d.n, h: d.h - 1, w: d.w - 1)
        return a.flops + b.flops + BatchNorm.flops(elements: d.n * shape.channels * a.h * a.w)
    }
}

// MARK: - sep_conv

/// (ReLU → depthwise k×k (stride s) → 1×1 → BN) → (ReLU → depthwise k×k → 1×1 → BN), padding k/2.
class SepConvOp {
    let host: PluginHost
    let shape: DartsShape
    let id: String
    let dw1: Conv, pw1: Conv, dw2: Conv, pw2: Conv
    let bn1: BatchNorm, bn2: BatchNorm

    init(host: PluginHost, config: OpConfig, id: String, kernel: Int) throws {
        self.host = host
        self.id = id
        shape = try DartsShape(config, id: id)
        let c = shape.channels, p = kernel / 2
        dw1 = try Conv(host, "dw1.weight", cIn: c, cOut: c, kernel: kernel, stride: shape.stride, padding: p, groups: c)
        pw1 = try Conv(host, "pw1.weight", cIn: c, cOut: c, kernel: 1)
        bn1 = try BatchNorm(host, "bn1", channels: c, affine: shape.affine)
        dw2 = try Conv(host, "dw2.weight", cIn: c, cOut: c, kernel: kernel, stride: 1, padding: p, groups: c)
        pw2 = try Conv(host, "pw2.weight", cIn: c, cOut: c, kernel: 1)
        bn2 = try BatchNorm(host, "bn2", channels: c, affine: shape.affine)
    }

    func buildSep(graph: es_graph, input: es_value) throws -> es_value {
        try checkInput(host, input, channels: shape.channels, id: id)
        var x = try dw1.applyReLU(host, graph, input)
        x = try pw1.apply(host, graph, x)
        x = try bn1.apply(host, graph, x)
        x = try dw2.applyReLU(host, graph, x)
        x = try pw2.apply(host, graph, x)
        return try bn2.apply(host, graph, x)
    }

    func sepFlops(input: TensorView) throws -> UInt64 {
        let d = try nchw(input, id: id)
        var total: UInt64 = 0
        var (h, w) = (d.h, d.w)
        for conv in [dw1, pw1, dw2, pw2] {
            let c = conv.cost(n: d.n, h: h, w: w)
            total += c.flops
            (h, w) = (c.h, c.w)
        }
        return total + 2 * BatchNorm.flops(elements: d.n * shape.channels * h * w)
    }
}

final class SepConv3x3Op: SepConvOp, ComposedOp, FlopsCounting {
    static let id = "espalier.op.sep_conv_3x3/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, id: Self.id, kernel: 3)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildSep(graph: graph, input: input) }
    func flops(input: TensorView) throws -> UInt64 { try sepFlops(input: input) }
}

final class SepConv5x5Op: SepConvOp, ComposedOp, FlopsCounting {
    static let id = "espalier.op.sep_conv_5x5/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, id: Self.id, kernel: 5)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildSep(graph: graph, input: input) }
    func flops(input: TensorView) throws -> UInt64 { try sepFlops(input: input) }
}

// MARK: - dil_conv

/// ReLU → depthwise k×k (stride s, dilation 2, padding 2 for k=3 / 4 for k=5) → 1×1 → BN.
class DilConvOp {
    let host: PluginHost
    let shape: DartsShape
    let id: String
    let dw: Conv, pw: Conv
    let bn: BatchNorm

    init(host: PluginHost, config: OpConfig, id: String, kernel: Int) throws {
        self.host = host
        self.id = id
        shape = try DartsShape(config, id: id)
        let c = shape.channels
        dw = try Conv(host, "dw.weight", cIn: c, cOut: c, kernel: kernel, stride: shape.stride, padding: kernel - 1,
                      dilation: 2, groups: c)
        pw = try Conv(host, "pw.weight", cIn: c, cOut: c, kernel: 1)
        bn = try BatchNorm(host, "bn", channels: c, affine: shape.affine)
    }

    func buildDil(graph: es_graph, input: es_value) throws -> es_value {
        try checkInput(host, input, channels: shape.channels, id: id)
        var x = try dw.applyReLU(host, graph, input)
        x = try pw.apply(host, graph, x)
        return try bn.apply(host, graph, x)
    }

    func dilFlops(input: TensorView) throws -> UInt64 {
        let d = try nchw(input, id: id)
        let a = dw.cost(n: d.n, h: d.h, w: d.w)
        return a.flops + pw.cost(n: d.n, h: a.h, w: a.w).flops + BatchNorm.flops(elements: d.n * shape.channels * a.h * a.w)
    }
}

final class DilConv3x3Op: DilConvOp, ComposedOp, FlopsCounting {
    static let id = "espalier.op.dil_conv_3x3/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, id: Self.id, kernel: 3)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildDil(graph: graph, input: input) }
    func flops(input: TensorView) throws -> UInt64 { try dilFlops(input: input) }
}

final class DilConv5x5Op: DilConvOp, ComposedOp, FlopsCounting {
    static let id = "espalier.op.dil_conv_5x5/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, id: Self.id, kernel: 5)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildDil(graph: graph, input: input) }
    func flops(input: TensorView) throws -> UInt64 { try dilFlops(input: input) }
}
