// Each host primitive's ONNX form (opset 13), beside the primitive table (Primitives.swift): one
// entry per primitive an evaluation-mode network can contain, written from the node's inputs,
// shapes and attributes. The batch dimension stays symbolic: reshapes copy it (0). Not here, so
// refused by name (ONNXBuilder.op): `gate` and `channel_mask` (search-time masks; an exported
// network is built at its masks' widths with none) and `raw` ops.

import EspalierCore
import Foundation

extension Primitives {
    public typealias ONNXForm = (ONNXBuilder, ONNXArgs) throws -> String

    /// A number far past any dimension, for "to the end" in Slice.
    static let sliceEnd = Int(Int32.max)

    static func convAttributes(_ a: ONNXArgs) -> [ONNX.Attribute] {
        let w = a.shapes[1], s = a.int("stride", 1), p = a.int("padding", 0), d = a.int("dilation", 1)
        return [.ints("kernel_shape", [w[2], w[3]]), .ints("strides", [s, s]), .ints("pads", [p, p, p, p]),
                .ints("dilations", [d, d]), .int("group", a.int("groups", 1))]
    }

    static func poolAttributes(_ a: ONNXArgs) -> [ONNX.Attribute] {
        let k = a.int("kernel", 1), s = a.int("stride", 1), p = a.int("padding", 0)
        return [.ints("kernel_shape", [k, k]), .ints("strides", [s, s]), .ints("pads", [p, p, p, p])]
    }

    static func slice(_ b: ONNXBuilder, name: String, _ x: String, starts: [Int], ends: [Int], axes: [Int], steps: [Int]? = nil) -> String {
        var inputs = [x, b.ints(name + "/starts", starts), b.ints(name + "/ends", ends), b.ints(name + "/axes", axes)]
        if let steps { inputs.append(b.ints(name + "/steps", steps)) }
        return b.node("Slice", name: name, inputs)
    }

    public static let onnx: [String: ONNXForm] = [
        "conv2d": { b, a in b.node("Conv", name: a.name, a.inputs, convAttributes(a)) },
        "relu_conv2d": { b, a in
            let r = b.node("Relu", name: a.name + "/relu", [a.inputs[0]])
            return b.node("Conv", name: a.name, [r, a.inputs[1]], convAttributes(a))
        },
        "relu": { b, a in b.node("Relu", name: a.name, a.inputs) },
        "add": { b, a in b.node("Add", name: a.name, a.inputs) },
        "sum": { b, a in b.node(a.inputs.count == 1 ? "Identity" : "Sum", name: a.name, a.inputs) },
        "scale": { b, a in
            b.node("Mul", name: a.name, [a.inputs[0], b.floats(a.name + "/factor", shape: [], [Float(a.attributes["factor"] ?? 1)])])
        },
        "max_pool2d": { b, a in b.node("MaxPool", name: a.name, a.inputs, poolAttributes(a)) },
        "avg_pool2d": { b, a in
            b.node("AveragePool", name: a.name, a.inputs, poolAttributes(a) + [.int("count_include_pad", a.int("count_include_pad", 0) != 0 ? 1 : 0)])
        },
        "global_avg_pool": { b, a in
            b.node("Flatten", name: a.name, [b.node("GlobalAveragePool", name: a.name + "/pool", a.inputs)], [.int("axis", 1)])
        },
        "batch_norm": { b, a in
            // Inference form: (x − running mean)/√(running var + eps)·γ + β; without γ, β: 1 and 0.
            let c = a.shapes[0][1]
            let gamma = a.inputs.count == 5 ? a.inputs[3] : b.floats(a.name + "/ones", shape: [c], [Float](repeating: 1, count: c))
            let beta = a.inputs.count == 5 ? a.inputs[4] : b.floats(a.name + "/zeros", shape: [c], [Float](repeating: 0, count: c))
            return b.node("BatchNormalization", name: a.name, [a.inputs[0], gamma, beta, a.inputs[1], a.inputs[2]],
                          [.float("epsilon", Float(a.attributes["eps"] ?? 1e-5))])
        },
        "concat_channels": { b, a in b.node(a.inputs.count == 1 ? "Identity" : "Concat", name: a.name, a.inputs, a.inputs.count == 1 ? [] : [.int("axis", 1)]) },
        "narrow_channels": { b, a in
            let start = a.int("start", 0)
            return slice(b, name: a.name, a.inputs[0], starts: [start], ends: [start + a.int("length", 0)], axes: [1])
        },
        "channel_shuffle": { b, a in
            // y[i·g + k] = x[k·(C/g) + i]: (N, g, C/g, H, W) → transpose the group axes → (N, C, H, W).
            let s = a.shapes[0], g = a.int("groups", 1)
            guard g > 1, g < s[1] else { return b.node("Identity", name: a.name, a.inputs) }
            let split = b.node("Reshape", name: a.name + "/split", [a.inputs[0], b.ints(a.name + "/split_shape", [0, g, s[1] / g] + Array(s.dropFirst(2)))])
            let t = b.node("Transpose", name: a.name + "/transpose", [split], [.ints("perm", [0, 2, 1] + Array(3..<(s.count + 1)))])
            return b.node("Reshape", name: a.name, [t, b.ints(a.name + "/shape", [0] + Array(s.dropFirst()))])
        },
        "linear": { b, a in b.node("Gemm", name: a.name, a.inputs, [.int("transB", 1)]) },
        "zeros_like": { b, a in
            let s = a.int("stride", 1)
            let sub = s == 1 ? a.inputs[0] : slice(b, name: a.name, a.inputs[0], starts: [0, 0], ends: [sliceEnd, sliceEnd], axes: [2, 3], steps: [s, s])
            let shape = b.node("Shape", name: a.name + "/shape", [sub])
            return b.node("ConstantOfShape", name: a.name, [shape], [.tensor("value", ONNX.Tensor(name: "zero", dims: [1], floats: [0]))])
        },
        // Evaluation form: the identity.
        "dropout": { b, a in b.node("Identity", name: a.name, a.inputs) },
        "drop_path": { b, a in b.node("Identity", name: a.name, a.inputs) },
        "weighted_sum": { b, a in
            // Σ_i w[i]·x_i, w the last input (a vector).
            let w = a.inputs.last!
            let terms = a.inputs.dropLast().enumerated().map { i, x -> String in
                let wi = slice(b, name: a.name + "/w\(i)", w, starts: [i], ends: [i + 1], axes: [0])
                return b.node("Mul", name: a.name + "/term\(i)", [x, wi])
            }
            return b.node(terms.count == 1 ? "Identity" : "Sum", name: a.name, terms)
        },
        "channel_scale": { b, a in
            let rank = a.shapes[0].count, c = a.shapes[0][1]
            let w = b.node("Reshape", name: a.name + "/w", [a.inputs[1], b.ints(a.name + "/w_shape", [1, c] + Array(repeating: 1, count: rank - 2))])
            return b.node("Mul", name: a.name, [a.inputs[0], w])
        },
        "crop": { b, a in
            let top = a.int("top", 0), left = a.int("left", 0)
            let h = a.attributes["height"].map { top + Int($0) } ?? sliceEnd, w = a.attributes["width"].map { left + Int($0) } ?? sliceEnd
            return slice(b, name: a.name, a.inputs[0], starts: [top, left], ends: [h, w], axes: [2, 3])
        },
        "mean": { b, a in
            let m = b.node("ReduceMean", name: a.name + "/reduce", a.inputs, [.int("keepdims", 0)])
            return b.node("Reshape", name: a.name, [m, b.ints(a.name + "/shape", [1])])
        },
        "kernel_mask": { b, a in
            let keep = try KernelMask.keep(shape: a.shapes[0], size: a.int("size", 1), dilation: a.int("dilation", 1))
            return b.node("Mul", name: a.name, [a.inputs[0], b.floats(a.name + "/keep", shape: a.shapes[0], keep.map { $0 ? 1 : 0 })])
        },
    ]
}
