// FiGS's fine-grained ops: the DARTS separable and dilated convolutions with per-channel masks on
// their intermediate convolution and on their output (FiGS §3.2), as COMPOSED ops. Each mask is a
// vector of logits ν (ES_PARAM_FLAG_ARCH, no weight decay, init `logit_init` = 2.5, π = σ(ν) ≈ 0.92)
// applied with the host's `channel_mask` primitive (ABI 1.6: the run's gate for role "channel",
// e.g. espalier.gate.figs/1, then x · m[c]):
//   figs_sep_conv_k   ReLU → dw k×k (stride s) → 1×1 (C → M) → BN → ·m_mid  →  ReLU → dw k×k → 1×1 (M → C_out) → BN → ·m_out
//   figs_dil_conv_k   ReLU → dw k×k dilation 2 (stride s) → 1×1 (C → C_out) → BN → ·m_out
// The host reads the masks from the op's IR and derives the cost targets and the export from
// them; the op only asks the host how wide to build each mask's channels (`channel_width`): in a
// network built from the export the sep conv gets M = ⌊Σ π_mid⌋ and no masks (no logits, no gate).
// `mid_channels` (0 = C) sets M by hand; `masks` false builds the plain op at the settings' widths.
// Each ReLU is fused into the depthwise conv after it (`relu_conv2d`, ABI 1.2: relu(x) is never
// stored). The output has the host's C_out channels: C in the supernet and wherever nodes sum
// their ops; a network whose nodes concatenate (FiGS's concat aggregator) builds each op with
// C_out = ⌊Σ π_out⌋.

import EspalierPluginKit

/// A bias-free conv2d, weight (Cout, Cin/groups, k, k), U(±1/√fan-in).
struct FigsConv {
    let weight: es_param
    let stride: Int, padding: Int, dilation: Int, groups: Int

    init(_ host: PluginHost, _ name: String, cIn: Int, cOut: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
         dilation: Int = 1, groups: Int = 1) throws {
        self.stride = stride; self.padding = padding; self.dilation = dilation; self.groups = groups
        weight = try host.declareParam(name, shape: [cOut, cIn / groups, kernel, kernel], initializer: .uniformFanIn((cIn / groups) * kernel * kernel))
    }

    func apply(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        try apply(host, graph, x, primitive: "conv2d")
    }

    /// conv(relu(x)): the host's `relu_conv2d` (ABI 1.2), whose depthwise path applies the ReLU
    /// inside the kernel so relu(x) is never stored; on an older host, relu then conv2d.
    func applyReLU(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        guard host.hasPrimitive("relu_conv2d") else { return try apply(host, graph, try host.apply(graph, "relu", [x])) }
        return try apply(host, graph, x, primitive: "relu_conv2d")
    }

    private func apply(_ host: PluginHost, _ graph: es_graph, _ x: es_value, primitive: String) throws -> es_value {
        try host.apply(graph, primitive, [x, try host.param(graph, weight)], attrs: [
            "stride": Double(stride), "padding": Double(padding), "dilation": Double(dilation), "groups": Double(groups),
        ])
    }
}

/// BatchNorm2d (momentum 0.1, eps 1e-5) with running statistics as buffers; γ, β when affine.
struct FigsBatchNorm {
    let gamma: es_param?, beta: es_param?, mean: es_param, variance: es_param

    init(_ host: PluginHost, _ prefix: String, channels: Int, affine: Bool) throws {
        gamma = affine ? try host.declareParam(prefix + ".weight", shape: [channels], initializer: .ones) : nil
        beta = affine ? try host.declareParam(prefix + ".bias", shape: [channels], initializer: .zeros) : nil
        mean = try host.declareParam(prefix + ".running_mean", shape: [channels], initializer: .zeros, flags: .buffer)
        variance = try host.declareParam(prefix + ".running_var", shape: [channels], initializer: .ones, flags: .buffer)
    }

    func apply(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        var inputs = [x, try host.param(graph, mean), try host.param(graph, variance)]
        if let gamma, let beta { inputs += [try host.param(graph, gamma), try host.param(graph, beta)] }
        return try host.apply(graph, "batch_norm", inputs, attrs: ["momentum": 0.1, "eps": 1e-5])
    }
}

/// A per-channel mask: logits ν (C) → `channel_mask` (the run's gate for role "channel", then
/// x · m[c]). Its width comes from the host first (`channel_width`): in a search the searched
/// width, with logits; in an exported network the width the search kept, with no logits (x passes
/// through). `masks` false builds the plain op at the widths the settings give.
struct ChannelMask {
    typealias Width = (width: Int, searched: Bool)
    let logits: es_param?

    /// How wide the host builds what mask `name` gates (asked before any parameter is declared).
    static func width(_ host: PluginHost, _ name: String, channels: Int, enabled: Bool) throws -> Width {
        enabled ? try host.channelWidth(name, channels: channels) : (channels, false)
    }

    init(_ host: PluginHost, _ name: String, _ width: Width, initialLogit: Double) throws {
        logits = width.searched ? try host.declareParam(name, shape: [width.width], initializer: .constant(initialLogit), flags: [.arch, .noDecay]) : nil
    }

    func apply(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        guard let logits else { return x }
        return try host.channelMask(graph, x, logits: logits)
    }
}

/// The checked config shared by the FiGS ops: C_in = C, C_out ≥ 1 (C where nodes sum; any width
/// where they concatenate), stride 1 or 2, the mask init.
struct FigsShape {
    let channels: Int, outChannels: Int, stride: Int, affine: Bool, initialLogit: Double, masks: Bool

    init(_ config: OpConfig, _ params: ParamValues, id: String) throws {
        guard config.inChannels > 0, config.outChannels > 0 else {
            throw PluginError.invalidArgument("\(id): channel counts must be positive; got C_in \(config.inChannels), C_out \(config.outChannels) at '\(config.owner)'")
        }
        guard config.stride == 1 || config.stride == 2 else {
            throw PluginError.invalidArgument("\(id): stride must be 1 or 2; got \(config.stride) at '\(config.owner)'")
        }
        channels = config.inChannels; outChannels = config.outChannels; stride = config.stride; affine = config.affine
        initialLogit = try params.double("logit_init")
        masks = try params.bool("masks")
        guard initialLogit.isFinite else { throw PluginError.invalidArgument("\(id): logit_init must be finite (got \(initialLogit))") }
    }

    func checkInput(_ host: PluginHost, _ input: es_value, id: String) throws {
        let s = try host.view(input).shape
        guard s.count == 4, s[1] == channels else { throw PluginError.shape("\(id): expects input (N, \(channels), H, W); got \(s)") }
    }
}

// MARK: - figs_sep_conv

class FigsSepConvOp {
    let host: PluginHost, shape: FigsShape, id: String
    let dw1: FigsConv, pw1: FigsConv, dw2: FigsConv, pw2: FigsConv
    let bn1: FigsBatchNorm, bn2: FigsBatchNorm
    let maskMid: ChannelMask, maskOut: ChannelMask

    init(host: PluginHost, config: OpConfig, params: ParamValues, id: String, kernel: Int) throws {
        self.host = host; self.id = id
        shape = try FigsShape(config, params, id: id)
        let c = shape.channels, cOut = shape.outChannels, p = kernel / 2
        let m = try params.int("mid_channels")
        guard m >= 0, m <= c else { throw PluginError.invalidArgument("\(id): mid_channels must be in 0…\(c) (0 = C = \(c)); got \(m)") }
        // The host says how wide to build what the masks gate (the output mask's width is C_out).
        let midWidth = try ChannelMask.width(host, "mask_mid.logits", channels: m == 0 ? c : m, enabled: shape.masks)
        let outWidth = try ChannelMask.width(host, "mask_out.logits", channels: cOut, enabled: shape.masks)
        let mid = midWidth.width
        dw1 = try FigsConv(host, "dw1.weight", cIn: c, cOut: c, kernel: kernel, stride: shape.stride, padding: p, groups: c)
        pw1 = try FigsConv(host, "pw1.weight", cIn: c, cOut: mid, kernel: 1)
        bn1 = try FigsBatchNorm(host, "bn1", channels: mid, affine: shape.affine)
        maskMid = try ChannelMask(host, "mask_mid.logits", midWidth, initialLogit: shape.initialLogit)
        dw2 = try FigsConv(host, "dw2.weight", cIn: mid, cOut: mid, kernel: kernel, padding: p, groups: mid)
        pw2 = try FigsConv(host, "pw2.weight", cIn: mid, cOut: cOut, kernel: 1)
        bn2 = try FigsBatchNorm(host, "bn2", channels: cOut, affine: shape.affine)
        maskOut = try ChannelMask(host, "mask_out.logits", outWidth, initialLogit: shape.initialLogit)
    }

    func buildSep(graph: es_graph, input: es_value) throws -> es_value {
        try shape.checkInput(host, input, id: id)
        var x = try bn1.apply(host, graph, try pw1.apply(host, graph, try dw1.applyReLU(host, graph, input)))
        x = try maskMid.apply(host, graph, x)
        x = try bn2.apply(host, graph, try pw2.apply(host, graph, try dw2.applyReLU(host, graph, x)))
        return try maskOut.apply(host, graph, x)
    }
}

final class FigsSepConv3x3Op: FigsSepConvOp, ComposedOp {
    static let id = "espalier.op.figs_sep_conv_3x3/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, params: params, id: Self.id, kernel: 3)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildSep(graph: graph, input: input) }
}

final class FigsSepConv5x5Op: FigsSepConvOp, ComposedOp {
    static let id = "espalier.op.figs_sep_conv_5x5/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, params: params, id: Self.id, kernel: 5)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildSep(graph: graph, input: input) }
}

// MARK: - figs_dil_conv

class FigsDilConvOp {
    let host: PluginHost, shape: FigsShape, id: String
    let dw: FigsConv, pw: FigsConv, bn: FigsBatchNorm, maskOut: ChannelMask

    init(host: PluginHost, config: OpConfig, params: ParamValues, id: String, kernel: Int) throws {
        self.host = host; self.id = id
        shape = try FigsShape(config, params, id: id)
        let c = shape.channels, cOut = shape.outChannels
        let outWidth = try ChannelMask.width(host, "mask_out.logits", channels: cOut, enabled: shape.masks)
        dw = try FigsConv(host, "dw.weight", cIn: c, cOut: c, kernel: kernel, stride: shape.stride, padding: kernel - 1, dilation: 2, groups: c)
        pw = try FigsConv(host, "pw.weight", cIn: c, cOut: cOut, kernel: 1)
        bn = try FigsBatchNorm(host, "bn", channels: cOut, affine: shape.affine)
        maskOut = try ChannelMask(host, "mask_out.logits", outWidth, initialLogit: shape.initialLogit)
    }

    func buildDil(graph: es_graph, input: es_value) throws -> es_value {
        try shape.checkInput(host, input, id: id)
        return try maskOut.apply(host, graph, try bn.apply(host, graph, try pw.apply(host, graph, try dw.applyReLU(host, graph, input))))
    }
}

final class FigsDilConv3x3Op: FigsDilConvOp, ComposedOp {
    static let id = "espalier.op.figs_dil_conv_3x3/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, params: params, id: Self.id, kernel: 3)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildDil(graph: graph, input: input) }
}

final class FigsDilConv5x5Op: FigsDilConvOp, ComposedOp {
    static let id = "espalier.op.figs_dil_conv_5x5/1"
    required init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        try super.init(host: host, config: config, params: params, id: Self.id, kernel: 5)
    }
    func build(graph: es_graph, input: es_value) throws -> es_value { try buildDil(graph: graph, input: input) }
}
