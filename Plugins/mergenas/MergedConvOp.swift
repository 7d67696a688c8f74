// MergeNAS's merged convolution (Wang et al., IJCAI 2020) as a composed op with `build_mixed`:
// one shared 9×9 depthwise kernel w per edge stands for the four DARTS convolutions, each a mask
// of it, and the edge's mixing weights a of those candidates merge the masks into ONE kernel:
//   K = Σ_o a_o · (mask_o ⊙ w)                      w, K: (C, 1, 9, 9)
//   y = BN(conv1×1(dwconv(ReLU(x), K, stride s, padding 4)))
// so by linearity dwconv(x, K) = Σ_o a_o · dwconv(x, mask_o ⊙ w): one convolution (and one set of
// activations) instead of four. Masks (rows/columns of the 9×9 kernel that are kept, both axes):
//   sep_conv_3x3  3..5            (3×3 centre)
//   sep_conv_5x5  2..6            (5×5 centre)
//   dil_conv_3x3  2, 4, 6         (3×3 at dilation 2, spans 5×5)
//   dil_conv_5x5  0, 2, 4, 6, 8   (5×5 at dilation 2, spans 9×9)
// Simplification, as in the authors' search code (`MergeSepConv(…, single=True, with_d5=True)`,
// kernel_size 5 → 9, padding 4): DARTS's sep_conv is two stacked ReLU-dw-1×1-BN blocks and
// dil_conv one; the merged op searches with ONE block (`blocks` = 1) for all four candidates, so
// the candidates share the 1×1 convolution and BN too. `blocks` = 2 stacks a second block (its
// own 9×9 kernel, merged with the same weights, stride 1), the reference's `single=False`.
// Not here: merging the parameter-free ops (skip, pooling) into the kernel, which the paper also
// proposes; they stay ordinary candidates.

import EspalierPluginKit

/// The candidate convolutions a merged kernel can stand for: window size and dilation inside the
/// 9×9 kernel (centred).
enum MergedCandidate: String, CaseIterable {
    case sepConv3x3 = "sep_conv_3x3", sepConv5x5 = "sep_conv_5x5", dilConv3x3 = "dil_conv_3x3", dilConv5x5 = "dil_conv_5x5"

    var size: Int { self == .sepConv3x3 || self == .dilConv3x3 ? 3 : 5 }
    var dilation: Int { self == .dilConv3x3 || self == .dilConv5x5 ? 2 : 1 }

    /// Parses the `covers` parameter: comma-separated short names, each once.
    static func parse(_ text: String, id: String) throws -> [MergedCandidate] {
        let allowed = allCases.map(\.rawValue).joined(separator: ", ")
        let names = text.split(separator: ",", omittingEmptySubsequences: false).map { trimmed($0) }
        var out: [MergedCandidate] = []
        for name in names {
            guard let c = MergedCandidate(rawValue: name) else {
                throw PluginError.invalidArgument("\(id): covers = '\(text)': '\(name)' is not a convolution this op can merge; allowed: \(allowed) (comma-separated, each once)")
            }
            guard !out.contains(c) else {
                throw PluginError.invalidArgument("\(id): covers = '\(text)' names '\(name)' twice; allowed: \(allowed), each once")
            }
            out.append(c)
        }
        return out
    }
}

/// `text` without leading and trailing spaces and tabs.
func trimmed<S: StringProtocol>(_ text: S) -> String {
    var s = Substring(text)
    while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
    while let l = s.last, l == " " || l == "\t" { s.removeLast() }
    return String(s)
}

/// The merged op: `blocks` × (ReLU → depthwise 9×9 with the merged kernel → 1×1 → BN).
final class MergedConvOp: MixedComposedOp {
    static let id = "espalier.op.mergenas_conv/1"
    static let kernel = 9, padding = 4
    static let defaultCovers = MergedCandidate.allCases.map(\.rawValue).joined(separator: ",")

    let host: PluginHost
    let channels: Int, stride: Int
    let covers: [MergedCandidate]
    /// Per block: the shared depthwise kernel (C, 1, 9, 9), the 1×1 conv (C, C, 1, 1), BN.
    let blocks: [(depthwise: es_param, pointwise: es_param, bn: BatchNorm)]

    init(host: PluginHost, config: OpConfig, params: ParamValues) throws {
        self.host = host
        let id = Self.id
        guard config.inChannels > 0, config.inChannels == config.outChannels else {
            throw PluginError.invalidArgument("\(id): keeps the channel count (C_in == C_out); got C_in \(config.inChannels), C_out \(config.outChannels) at '\(config.owner)'")
        }
        guard config.stride == 1 || config.stride == 2 else {
            throw PluginError.invalidArgument("\(id): stride must be 1 or 2; got \(config.stride) at '\(config.owner)'")
        }
        guard host.hasPrimitive("kernel_mask") else {
            throw PluginError.unsupported("\(id): the host has no 'kernel_mask' primitive (it derives the candidate kernels from the shared 9x9 kernel); use a newer espalier")
        }
        channels = config.inChannels
        stride = config.stride
        covers = try MergedCandidate.parse(try params.string("covers"), id: id)
        let count = try params.int("blocks")
        guard count == 1 || count == 2 else {
            throw PluginError.invalidArgument("\(id): blocks = \(count); allowed: 1 (the authors' search setting) or 2 (two stacked blocks, like DARTS's sep_conv)")
        }
        let c = channels
        blocks = try (1...count).map { b in
            // Kaiming normal, fan-in 81 (the reference's init of the shared kernel); 1×1 as PyTorch's default.
            let dw = try host.declareParam("dw\(b).weight", shape: [c, 1, Self.kernel, Self.kernel],
                                           initializer: .normal(std: (2.0 / Double(Self.kernel * Self.kernel)).squareRoot()))
            let pw = try host.declareParam("pw\(b).weight", shape: [c, c, 1, 1], initializer: .uniformFanIn(c))
            return (dw, pw, try BatchNorm(host, "bn\(b)", channels: c, affine: config.affine))
        }
    }

    /// Without mixing weights (a network that is not a supernet): the covered candidates weighted
    /// equally, K = Σ_o (1/k)·(mask_o ⊙ w).
    func build(graph: es_graph, input: es_value) throws -> es_value {
        try apply(graph, input) { masked in
            let share = 1.0 / Double(masked.count)
            return try host.apply(graph, "sum", try masked.map { try host.apply(graph, "scale", [$0], attrs: ["factor": share]) })
        }
    }

    /// With the edge's mixing weights a (k) of the covered candidates, in `covers` order.
    func buildMixed(graph: es_graph, input: es_value, weights: es_value) throws -> es_value {
        let shape = try host.view(weights).shape
        guard shape == [covers.count] else {
            throw PluginError.shape("\(Self.id): mixing weights must have shape (\(covers.count)) — one per covered candidate (\(covers.map(\.rawValue).joined(separator: ","))); got \(shape)")
        }
        return try apply(graph, input) { masked in try host.apply(graph, "weighted_sum", masked + [weights]) }
    }

    /// The blocks, each merging its masked kernels with `merge`.
    private func apply(_ graph: es_graph, _ input: es_value, merge: ([es_value]) throws -> es_value) throws -> es_value {
        let s = try host.view(input).shape
        guard s.count == 4, s[1] == channels else {
            throw PluginError.shape("\(Self.id): expects input (N, \(channels), H, W); got \(s)")
        }
        var x = input
        for (b, block) in blocks.enumerated() {
            let w = try host.param(graph, block.depthwise)
            let masked = try covers.map {
                try host.apply(graph, "kernel_mask", [w], attrs: ["size": Double($0.size), "dilation": Double($0.dilation)])
            }
            let k = try merge(masked)                                          // (C, 1, 9, 9)
            x = try host.apply(graph, "relu", [x])
            x = try host.apply(graph, "conv2d", [x, k], attrs: [
                "stride": Double(b == 0 ? stride : 1), "padding": Double(Self.padding), "groups": Double(channels),
            ])
            x = try host.apply(graph, "conv2d", [x, try host.param(graph, block.pointwise)])
            x = try block.bn.apply(host, graph, x)
        }
        return x
    }
}

/// BatchNorm2d (momentum 0.1, eps 1e-5): running statistics as buffers; γ (ones) and β (zeros)
/// only when affine. Declared in PyTorch's order: weight, bias, running_mean, running_var.
struct BatchNorm {
    let gamma: es_param?, beta: es_param?
    let runningMean: es_param, runningVar: es_param

    init(_ host: PluginHost, _ prefix: String, channels: Int, affine: Bool) throws {
        gamma = affine ? try host.declareParam(prefix + ".weight", shape: [channels], initializer: .ones) : nil
        beta = affine ? try host.declareParam(prefix + ".bias", shape: [channels], initializer: .zeros) : nil
        runningMean = try host.declareParam(prefix + ".running_mean", shape: [channels], initializer: .zeros, flags: .buffer)
        runningVar = try host.declareParam(prefix + ".running_var", shape: [channels], initializer: .ones, flags: .buffer)
    }

    func apply(_ host: PluginHost, _ graph: es_graph, _ x: es_value) throws -> es_value {
        var inputs = [x, try host.param(graph, runningMean), try host.param(graph, runningVar)]
        if let gamma, let beta { inputs += [try host.param(graph, gamma), try host.param(graph, beta)] }
        return try host.apply(graph, "batch_norm", inputs, attrs: ["momentum": 0.1, "eps": 1e-5])
    }
}
