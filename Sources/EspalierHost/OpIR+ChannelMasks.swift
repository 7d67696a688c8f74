// Channel masks read from the op IR, for any op: a mask is a `channel_mask` node (ABI 1.6) whose
// logits are a parameter leaf of the op; it scales the channels of its input value by the run's
// "channel" gate on the logits. Masks reach a convolution's input through primitives that keep
// channels apart (ReLU, batch norm, scaling, dropout, a depthwise convolution), and a
// convolution's output reaches a mask through the same. From that, a convolution's parameter count
// as a function of its kept channels follows with no op-specific names: Cout·(Cin/groups)·KH·KW,
// each masked side counting Σπ instead of its width. A mask whose output reaches the op's output
// the same way is the op's output mask: the exported op keeps its C_out there (SearchRun+ChannelMasks.swift).

import Foundation

extension OpIR {
    /// A mask on the channels of one value.
    public struct ChannelMask: Equatable, Sendable {
        /// The logits' leaf name ("keep.logits"): the mask's name in targets and exports.
        public let logits: String
        /// The value whose channels it scales, and the `channel_mask` node that does.
        public let value: Int
        public let node: Int
    }

    /// A convolution and the masks on its input and output channels.
    public struct MaskedConvolution: Equatable, Sendable {
        public let node: Int
        /// The weight's leaf name ("proj.weight").
        public let weight: String
        /// (Cout, Cin/groups, KH, KW)
        public let weightShape: [Int]
        public let depthwise: Bool
        public let inputMask: ChannelMask?
        public let outputMask: ChannelMask?

        /// The masks its parameter count depends on, with each one's cost per kept channel: the
        /// product over the parts of Σ_i cost·π_i is its parameter count (a depthwise convolution's
        /// input and output channels are one set: one part).
        public var parameterCostParts: [(mask: ChannelMask, cost: Int)] {
            let (cOut, cInPerGroup, area) = (weightShape[0], weightShape[1], weightShape[2] * weightShape[3])
            if depthwise { return (inputMask ?? outputMask).map { [($0, cInPerGroup * area)] } ?? [] }
            switch (inputMask, outputMask) {
            case let (i?, o?): return [(i, area), (o, 1)]
            case let (i?, nil): return [(i, cOut * area)]
            case let (nil, o?): return [(o, cInPerGroup * area)]
            default: return []
            }
        }
    }

    /// Primitives through which a value's channels stay the same channels.
    static let channelKeeping: Set<String> = ["relu", "batch_norm", "scale", "dropout", "drop_path"]

    /// Every channel mask on a parameter's logits, in node order.
    public var channelMasks: [ChannelMask] {
        nodes.enumerated().compactMap { k, n in
            guard n.primitive == "channel_mask", n.inputs.count == 2, case .parameter(let logits) = values[n.inputs[1]].source else { return nil }
            return ChannelMask(logits: logits, value: n.inputs[0], node: k)
        }
    }

    /// The mask on the op's output channels (through channel-keeping primitives), if any.
    public var outputMask: ChannelMask? { mask(on: output, channelMasks) }

    /// One line per channel mask: what it scales, whether it is the output mask, and the
    /// convolutions whose input or output channels it gates (e.g. for `describe --graph`).
    public var channelMaskLines: [String] {
        let convs = maskedConvolutions, out = outputMask
        return channelMasks.map { m in
            let gated = convs.compactMap { c -> String? in
                let sides = [c.inputMask == m ? "in" : nil, c.outputMask == m ? "out" : nil].compactMap { $0 }
                guard !sides.isEmpty else { return nil }
                return "@\(c.weight) (\(c.depthwise ? "depthwise" : sides.joined(separator: ", ")))"
            }
            return "channel mask @\(m.logits) on \(name(m.value))" + (m == out ? ", the op's output" : "")
                + (gated.isEmpty ? "; gates no convolution" : "; gates " + gated.joined(separator: ", "))
        }
    }

    func isDepthwise(_ n: Node) -> Bool {
        guard n.primitive == "conv2d" || n.primitive == "relu_conv2d", n.inputs.count == 2 else { return false }
        let x = values[n.inputs[0]].shape, w = values[n.inputs[1]].shape, groups = Int(n.attributes["groups"] ?? 1)
        return groups > 1 && x.count == 4 && groups == x[1] && w[0] == x[1]
    }

    /// The mask on the channels of value `v`: a masked value's own mask, else its source's through
    /// channel-keeping primitives and depthwise convolutions.
    func mask(on v: Int, _ masks: [ChannelMask]) -> ChannelMask? {
        if let m = masks.first(where: { $0.node == nodeIndex(of: v) }) { return m }
        guard let k = nodeIndex(of: v) else { return nil }
        let n = nodes[k]
        if Self.channelKeeping.contains(n.primitive) || isDepthwise(n) { return mask(on: n.inputs[0], masks) }
        return nil
    }

    /// The mask value `v`'s channels reach: followed through its only consumer while that keeps channels.
    func mask(downstreamOf v: Int, _ masks: [ChannelMask]) -> ChannelMask? {
        let consumers = nodes.indices.filter { nodes[$0].inputs.contains(v) }
        guard consumers.count == 1, let k = consumers.first, nodes[k].inputs.first == v else { return nil }
        if let m = masks.first(where: { $0.node == k }) { return m }
        return Self.channelKeeping.contains(nodes[k].primitive) ? mask(downstreamOf: nodes[k].output, masks) : nil
    }

    func nodeIndex(of v: Int) -> Int? { if case .node(let k) = values[v].source { return k } else { return nil } }

    /// Every convolution on a weight parameter with a mask on its input or output channels, in node order.
    public var maskedConvolutions: [MaskedConvolution] {
        let masks = channelMasks
        guard !masks.isEmpty else { return [] }
        return nodes.enumerated().compactMap { k, n in
            guard n.primitive == "conv2d" || n.primitive == "relu_conv2d", n.inputs.count == 2,
                  case .parameter(let weight) = values[n.inputs[1]].source else { return nil }
            let depthwise = isDepthwise(n)
            let input = mask(on: n.inputs[0], masks)
            let output = depthwise ? nil : mask(downstreamOf: n.output, masks)
            guard input != nil || output != nil else { return nil }
            return MaskedConvolution(node: k, weight: weight, weightShape: values[n.inputs[1]].shape, depthwise: depthwise,
                                     inputMask: input, outputMask: output)
        }
    }
}
