// Fusion chosen from the op IR: the host finds the unit
//   relu_conv2d(x, wd){depthwise} or conv2d(x, wd){depthwise}  →  conv2d(·, wp){1×1}  →  batch_norm(·, mean, var)
// (batch norm without affine map) among the primitives an op's build applies, as they are
// recorded into its IR, and runs it as one fused op (EspalierCore's Graph.fusedSeparableUnit).
// It matches primitives, attributes and shapes, never an op's name: a third-party op built from
// the same primitives is fused too (MergeNAS's relu → conv2d → conv2d → batch_norm is).
//
// How a build is fused: the depthwise and the pointwise convolution are recorded in the IR but
// not run (their values pending); the batch norm runs the unit. Should the plugin use a pending
// value otherwise (read it with value_view, or apply another primitive to it), it is computed
// then by its primitive, its memory on its own node's account in the IR: the result is always
// the unfused ops' (their reference), only faster where the plugin applies the unit as a unit.
// Traces (dry runs) take the same path, so the IR's kept bytes and the memory prediction are
// those of the fused op. A value used both in a unit and elsewhere is computed twice.
// `OpIR.separableUnits()` names the units a build of the IR runs fused.

import CEspalierSDK
import EspalierCore

/// One unit of an IR run fused: its nodes in order (depthwise, pointwise, batch norm).
public struct FusedUnit: Equatable, Sendable {
    public let nodes: [Int]
}

/// The rules of a unit, on primitives, attributes and shapes (shared by the IR and the build):
/// each member's convolution geometry when it is one, else nil.
enum SeparableUnitRule {
    /// A depthwise convolution of x (N, C, H, W) by w (C, 1, k, k).
    static func depthwise(_ primitive: String, x: [Int], w: [Int], attributes a: [String: Double]) -> ConvGeometry? {
        guard primitive == "relu_conv2d" || primitive == "conv2d", x.count == 4, w.count == 4, x[1] > 1, w[0] == x[1], w[1] == 1,
              a["groups"] == Double(x[1]) else { return nil }
        return geometry(x: x, w: w, attributes: a)
    }

    /// A 1×1 convolution, stride 1, no padding, of x (N, Cin, H, W) by w (Cout, Cin, 1, 1).
    static func pointwise(_ primitive: String, x: [Int], w: [Int], attributes a: [String: Double]) -> ConvGeometry? {
        guard primitive == "conv2d", x.count == 4, w.count == 4, w[1] == x[1], w[2] == 1, w[3] == 1,
              (a["stride"] ?? 1) == 1, (a["padding"] ?? 0) == 0, (a["groups"] ?? 1) == 1 else { return nil }
        return geometry(x: x, w: w, attributes: a)
    }

    /// A batch norm without affine map (x, running mean, running variance).
    static func isBatchNorm(_ primitive: String, inputs: Int) -> Bool { isBatchNormPrimitive(primitive) && inputs == 3 }
    /// A batch norm, with or without affine map.
    static func isBatchNormPrimitive(_ primitive: String) -> Bool { primitive == "batch_norm" }

    /// The geometry, when its attributes are integers and it is a valid convolution.
    private static func geometry(x: [Int], w: [Int], attributes a: [String: Double]) -> ConvGeometry? {
        let at = Attributes(primitive: "conv2d", values: a)
        guard let s = try? at.int("stride", 1), let p = try? at.int("padding", 0), let d = try? at.int("dilation", 1), let g = try? at.int("groups", 1) else { return nil }
        let geometry = ConvGeometry(n: x[0], cIn: x[1], h: x[2], w: x[3], cOut: w[0], kh: w[2], kw: w[3], stride: s, padding: p, dilation: d, groups: g)
        return geometry.validate() == nil ? geometry : nil
    }
}

extension OpIR {
    /// The units a build of this IR runs fused: depthwise → pointwise → batch norm, by the rules above.
    public func separableUnits() -> [FusedUnit] {
        var producer: [Int: Int] = [:]
        for (k, n) in nodes.enumerated() { producer[n.output] = k }
        func shapes(_ n: Node) -> (x: [Int], w: [Int]) { (values[n.inputs[0]].shape, values[n.inputs[1]].shape) }
        var units: [FusedUnit] = []
        for (k, bn) in nodes.enumerated() where SeparableUnitRule.isBatchNorm(bn.primitive, inputs: bn.inputs.count) {
            guard let p = producer[bn.inputs[0]], nodes[p].inputs.count == 2,
                  SeparableUnitRule.pointwise(nodes[p].primitive, x: shapes(nodes[p]).x, w: shapes(nodes[p]).w, attributes: nodes[p].attributes) != nil,
                  let d = producer[nodes[p].inputs[0]], nodes[d].inputs.count == 2,
                  SeparableUnitRule.depthwise(nodes[d].primitive, x: shapes(nodes[d]).x, w: shapes(nodes[d]).w, attributes: nodes[d].attributes) != nil
            else { continue }
            units.append(FusedUnit(nodes: [d, p, k]))
        }
        return units
    }
}

/// A value a fused build has not computed: the primitive that makes it, from which handles.
struct PendingNode {
    let primitive: String
    let inputs: [es_value?]
    let attributes: [String: Double]
    /// Its FLOPs as the IR records them, its geometry, and whether it is the unit's depthwise
    /// (else its pointwise) convolution.
    let flops: Int
    let geometry: ConvGeometry
    let isDepthwise: Bool
}

extension GraphBuild {
    /// Applies primitive `name` as a member of a unit when it is one: records the depthwise and
    /// the pointwise convolution pending, runs the unit at its batch norm. nil: apply it as usual.
    func applyFused(_ name: String, inputs: [es_value?], attributes: [String: Double]) throws -> es_value? {
        guard graph.training, inputs.count >= 2, let first = try? index(inputs[0]) else { return nil }   // evaluation: nothing fuses
        if SeparableUnitRule.isBatchNorm(name, inputs: inputs.count) {
            guard let pw = pending[first], !pw.isDepthwise, let dw = pending[try index(pw.inputs[0])] else { return nil }
            let before = graph.accountant.currentTotal, flopsBefore = graph.flops
            let y = try graph.fusedSeparableUnit(try value(dw.inputs[0]), depthwise: try value(dw.inputs[1]), pointwise: try value(pw.inputs[1]),
                                                 stride: dw.geometry.stride, padding: dw.geometry.padding, dilation: dw.geometry.dilation,
                                                 reluInput: dw.primitive == "relu_conv2d",
                                                 runningMean: try value(inputs[1]).value, runningVar: try value(inputs[2]).value,
                                                 momentum: Float(attributes["momentum"] ?? 0.1), eps: Float(attributes["eps"] ?? 1e-5),
                                                 sink: takeSink(for: name))
            // Its FLOPs in the IR: the engine's count for the unit, less the pending members' own.
            return try node(y, name, inputs: inputs, attributes: attributes, flops: graph.flops - flopsBefore - pw.flops - dw.flops,
                            keptBytes: graph.accountant.currentTotal - before)
        }
        guard inputs.count == 2, !isPending(inputs[1]) else { return nil }
        let x = recorder.values[first].shape, w = recorder.values[try index(inputs[1])].shape
        // A depthwise convolution of a computed value, or a pointwise one of a pending depthwise output.
        let isDepthwise = values[first] != nil
        guard let g = isDepthwise ? SeparableUnitRule.depthwise(name, x: x, w: w, attributes: attributes)
                : pending[first]?.isDepthwise == true ? SeparableUnitRule.pointwise(name, x: x, w: w, attributes: attributes) : nil else { return nil }
        let flops = try Primitives.flops(name, [x, w], g.outputShape, attributes, training: graph.training)
        recorder.pendingNode(name, inputs: [first, try index(inputs[1])], attributes: attributes, shape: g.outputShape, flops: flops)
        values.append(nil)
        pending[values.count - 1] = PendingNode(primitive: name, inputs: inputs, attributes: attributes, flops: flops, geometry: g, isDepthwise: isDepthwise)
        return OpaquePointer(bitPattern: values.count)!
    }

    func isPending(_ h: es_value?) -> Bool { (try? index(h)).map { values[$0] == nil } ?? false }

    /// Computes pending value `i` (and the pending values it reads) with the primitives one by one.
    func materialize(_ i: Int) throws -> Variable {
        if let v = values[i] { return v }
        guard let p = pending[i] else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "not a value of this graph") }
        let xs = try p.inputs.map { try value($0) }
        let before = graph.accountant.currentTotal
        let y = try Primitives.apply(p.primitive, graph, xs, p.attributes)
        // What it keeps goes on its own node's account in the IR, as if it had run when applied.
        if case .node(let k) = recorder.values[i].source { recorder.keep(node: k, output: y.value, keptBytes: graph.accountant.currentTotal - before) }
        values[i] = y
        pending[i] = nil
        return y
    }
}
