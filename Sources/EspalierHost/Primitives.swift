// The host primitives a composed op may use (`graph_apply`), in one table: name → the attributes
// it reads, how to apply it on the engine's Graph, and its forward FLOPs from the shapes (the op
// IR's cost column: what the engine counts for it, checked by tests for every primitive). The
// engine's ops do the differentiation and the memory accounting; this file only maps names,
// inputs and attributes. An attribute a primitive does not read (a typo such as `strides`) is an
// error that lists the ones it does. Adding a primitive is appending a row.

import CEspalierSDK
import EspalierCore
import Foundation

struct Attributes {
    let primitive: String
    let values: [String: Double]
    /// Not an attribute: where a forward without tape adds this primitive's output instead of
    /// storing it (`batch_norm` only; GraphBuild.takeSink).
    var sink: ForwardSink? = nil

    func int(_ name: String, _ fallback: Int? = nil) throws -> Int {
        guard let v = values[name] else {
            if let fallback { return fallback }
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "\(primitive) needs attribute '\(name)'")
        }
        // Bounded, so that shape arithmetic on attributes (spans, products) cannot overflow.
        guard let i = Int(exactly: v), abs(i) <= Attributes.intLimit else {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "\(primitive): attribute '\(name)' = \(v) must be an integer of at most \(Attributes.intLimit) in size")
        }
        return i
    }

    /// An optional integer attribute (nil when absent).
    func optionalInt(_ name: String) throws -> Int? { values[name] == nil ? nil : try int(name) }

    static let intLimit = 1 << 31

    func double(_ name: String, _ fallback: Double) -> Double { values[name] ?? fallback }
}

public enum Primitives {
    typealias Apply = (Graph, [Variable], Attributes) throws -> Variable

    static func arity(_ name: String, _ xs: [Variable], _ n: ClosedRange<Int>) throws {
        guard n.contains(xs.count) else {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "\(name) takes \(n.lowerBound == n.upperBound ? "\(n.lowerBound)" : "\(n.lowerBound)…\(n.upperBound)") input(s), got \(xs.count)")
        }
    }

    /// Forward FLOPs from the input shapes, the output shape and the attributes (training: batch
    /// statistics or running ones).
    typealias Flops = (_ x: [[Int]], _ y: [Int], _ a: Attributes, _ training: Bool) throws -> Int

    /// A primitive: the attributes it reads, its forward FLOPs, and how it applies.
    struct Primitive {
        let attributes: [String]
        let flops: Flops
        let apply: Apply
        init(_ attributes: [String], flops: @escaping Flops = { _, _, _, _ in 0 }, _ apply: @escaping Apply) {
            self.attributes = attributes; self.flops = flops; self.apply = apply
        }
    }

    /// Forward FLOPs of primitive `name` (a known one: `apply` has checked it).
    public static func flops(_ name: String, _ x: [[Int]], _ y: [Int], _ attributes: [String: Double], training: Bool) throws -> Int {
        guard let p = table[name] else { return 0 }
        return try p.flops(x, y, Attributes(primitive: name, values: attributes), training)
    }

    static func count(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    /// The convolution's geometry (for its FLOPs and whether ReLU fuses into it).
    static func convGeometry(_ x: [[Int]], _ a: Attributes) throws -> ConvGeometry {
        ConvGeometry(n: x[0][0], cIn: x[0][1], h: x[0][2], w: x[0][3], cOut: x[1][0], kh: x[1][2], kw: x[1][3],
                     stride: try a.int("stride", 1), padding: try a.int("padding", 0), dilation: try a.int("dilation", 1), groups: try a.int("groups", 1))
    }

    /// k·k per output element, as the engine counts pools.
    static func poolFlops(_ y: [Int], _ a: Attributes) throws -> Int { let k = try a.int("kernel"); return count(y) * k * k }

    /// The primitives this host offers, sorted.
    public static var names: [String] { table.keys.sorted() }

    /// Applies primitive `name` after checking its attribute names; a `sink` is for `batch_norm`.
    static func apply(_ name: String, _ g: Graph, _ xs: [Variable], _ attributes: [String: Double], sink: ForwardSink?) throws -> Variable {
        guard let p = table[name] else {
            throw HostCallError(ES_ERROR_UNSUPPORTED, "unknown primitive '\(name)'; this host has: \(table.keys.sorted().joined(separator: ", "))")
        }
        for key in attributes.keys.sorted() where !p.attributes.contains(key) {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "primitive \(name) has no attribute '\(key)'; "
                                + (p.attributes.isEmpty ? "it takes none" : "its attributes: \(p.attributes.sorted().joined(separator: ", "))"))
        }
        precondition(sink == nil || SeparableUnitRule.isBatchNormPrimitive(name), "only batch_norm adds its output into a sink")
        return try p.apply(g, xs, Attributes(primitive: name, values: attributes, sink: sink))
    }

    /// Applies primitive `name` after checking its attribute names.
    public static func apply(_ name: String, _ g: Graph, _ xs: [Variable], _ attributes: [String: Double]) throws -> Variable {
        try apply(name, g, xs, attributes, sink: nil)
    }

    static let table: [String: Primitive] = [
        "conv2d": Primitive(["stride", "padding", "dilation", "groups"], flops: { x, _, a, _ in try convGeometry(x, a).forwardFlops }) { g, x, a in
            try arity("conv2d", x, 2...2)
            return try g.conv2d(x[0], x[1], stride: try a.int("stride", 1), padding: try a.int("padding", 0),
                                dilation: try a.int("dilation", 1), groups: try a.int("groups", 1))
        },
        "relu_conv2d": Primitive(["stride", "padding", "dilation", "groups"], flops: { x, _, a, _ in
            try convGeometry(x, a).forwardFlops   // the engine counts no FLOPs for a ReLU, fused or not
        }) { g, x, a in
            try arity("relu_conv2d", x, 2...2)
            return try g.conv2d(x[0], x[1], stride: try a.int("stride", 1), padding: try a.int("padding", 0),
                                dilation: try a.int("dilation", 1), groups: try a.int("groups", 1), reluInput: true)
        },
        "relu": Primitive([]) { g, x, _ in try arity("relu", x, 1...1); return try g.relu(x[0]) },
        "add": Primitive([], flops: { _, y, _, _ in count(y) }) { g, x, _ in try arity("add", x, 2...2); return try g.add(x[0], x[1]) },
        "sum": Primitive([], flops: { x, y, _, _ in count(y) * (x.count - 1) }) { g, x, _ in try arity("sum", x, 1...64); return try g.sum(x) },
        "scale": Primitive(["factor"]) { g, x, a in try arity("scale", x, 1...1); return try g.scale(x[0], by: Float(a.double("factor", 1))) },
        "max_pool2d": Primitive(["kernel", "stride", "padding"], flops: { _, y, a, _ in try poolFlops(y, a) }) { g, x, a in
            try arity("max_pool2d", x, 1...1)
            return try g.maxPool2d(x[0], kernel: try a.int("kernel"), stride: try a.int("stride", 1), padding: try a.int("padding", 0))
        },
        "avg_pool2d": Primitive(["kernel", "stride", "padding", "count_include_pad"], flops: { _, y, a, _ in try poolFlops(y, a) }) { g, x, a in
            try arity("avg_pool2d", x, 1...1)
            return try g.avgPool2d(x[0], kernel: try a.int("kernel"), stride: try a.int("stride", 1), padding: try a.int("padding", 0),
                                   countIncludePad: try a.int("count_include_pad", 0) != 0)
        },
        "global_avg_pool": Primitive([], flops: { x, _, _, _ in count(x[0]) }) { g, x, _ in try arity("global_avg_pool", x, 1...1); return try g.globalAvgPool(x[0]) },
        "batch_norm": Primitive(["momentum", "eps"], flops: { x, _, _, training in count(x[0]) * (training ? 5 : 2) }) { g, x, a in
            try arity("batch_norm", x, 3...5)
            guard x.count != 4 else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "batch_norm takes x, running_mean, running_var and optionally gamma and beta (both)") }
            return try g.batchNorm(x[0], gamma: x.count == 5 ? x[3] : nil, beta: x.count == 5 ? x[4] : nil,
                                   runningMean: x[1].value, runningVar: x[2].value,
                                   momentum: Float(a.double("momentum", 0.1)), eps: Float(a.double("eps", 1e-5)), sink: a.sink)
        },
        "concat_channels": Primitive([]) { g, x, _ in try arity("concat_channels", x, 1...64); return try g.concatChannels(x) },
        "narrow_channels": Primitive(["start", "length"]) { g, x, a in
            try arity("narrow_channels", x, 1...1)
            let start = try a.int("start"), length = try a.int("length")
            return try g.narrow(x[0], channels: start..<(start + length))
        },
        "channel_shuffle": Primitive(["groups"]) { g, x, a in try arity("channel_shuffle", x, 1...1); return try g.channelShuffle(x[0], groups: try a.int("groups")) },
        "linear": Primitive([], flops: { x, y, _, _ in 2 * count(x[0]) * y[1] + (x.count == 3 ? count(y) : 0) }) { g, x, _ in try arity("linear", x, 2...3); return try g.linear(x[0], weight: x[1], bias: x.count == 3 ? x[2] : nil) },
        "zeros_like": Primitive(["stride"]) { g, x, a in try arity("zeros_like", x, 1...1); return try g.zeros(like: x[0], stride: try a.int("stride", 1)) },
        "dropout": Primitive(["p"]) { g, x, a in try arity("dropout", x, 1...1); return try g.dropout(x[0], p: Float(a.double("p", 0))) },
        "drop_path": Primitive(["p"]) { g, x, a in try arity("drop_path", x, 1...1); return try g.dropPath(x[0], p: Float(a.double("p", 0))) },
        "weighted_sum": Primitive([], flops: { x, y, _, _ in 2 * count(y) * (x.count - 1) }) { g, x, _ in try arity("weighted_sum", x, 2...65); return try g.weightedSum(Array(x.dropLast()), weights: x.last!) },
        "channel_scale": Primitive([], flops: { _, y, _, _ in count(y) }) { g, x, _ in try arity("channel_scale", x, 2...2); return try g.channelScale(x[0], x[1]) },
        "crop": Primitive(["top", "left", "height", "width"]) { g, x, a in
            try arity("crop", x, 1...1)
            return try g.crop(x[0], top: try a.int("top", 0), left: try a.int("left", 0), height: try a.optionalInt("height"), width: try a.optionalInt("width"))
        },
        "mean": Primitive([], flops: { x, _, _, _ in count(x[0]) }) { g, x, _ in try arity("mean", x, 1...1); return try g.mean(x[0]) },
        "kernel_mask": Primitive(["size", "dilation"]) { g, x, a in
            try arity("kernel_mask", x, 1...1)
            let keep = try KernelMask.keep(shape: x[0].shape, size: try a.int("size"), dilation: try a.int("dilation", 1))
            return try g.maskedFill(x[0], keep: keep, value: 0)
        },
    ]
}

/// `kernel_mask(w) size, dilation`: keeps the taps of a centred size×size window at dilation d in
/// the last two dimensions of a kernel (…, KH, KW) and zeroes the rest; the gradient passes only
/// through the kept taps. MergeNAS derives its candidate kernels from one large kernel with it
/// (sep_conv_3x3 = size 3, dilation 1 of a 9×9 kernel; dil_conv_5x5 = size 5, dilation 2).
enum KernelMask {
    /// keep[i] for every element of a tensor of `shape`.
    static func keep(shape: [Int], size: Int, dilation: Int) throws -> [Bool] {
        guard shape.count >= 2 else {
            throw HostCallError(ES_ERROR_SHAPE, "kernel_mask needs a kernel (…, KH, KW); got shape \(shape)")
        }
        let kh = shape[shape.count - 2], kw = shape[shape.count - 1]
        guard size >= 1, dilation >= 1 else {
            throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "kernel_mask: size \(size) and dilation \(dilation) must be ≥ 1")
        }
        let span = (size - 1) * dilation + 1
        guard span <= kh, span <= kw, (kh - span) % 2 == 0, (kw - span) % 2 == 0 else {
            throw HostCallError(ES_ERROR_SHAPE,
                                "kernel_mask: a \(size)×\(size) window at dilation \(dilation) spans \(span)×\(span), which must fit centred in the kernel's \(kh)×\(kw) (same parity)")
        }
        let top = (kh - span) / 2, left = (kw - span) / 2
        func kept(_ i: Int, _ start: Int) -> Bool { i >= start && i < start + span && (i - start) % dilation == 0 }
        var plane = [Bool](repeating: false, count: kh * kw)   // (KH, KW)
        for i in 0..<kh where kept(i, top) { for j in 0..<kw where kept(j, left) { plane[i * kw + j] = true } }
        let planes = shape.dropLast(2).reduce(1, *)
        var keep: [Bool] = []
        keep.reserveCapacity(planes * plane.count)
        for _ in 0..<planes { keep.append(contentsOf: plane) }
        return keep
    }
}
