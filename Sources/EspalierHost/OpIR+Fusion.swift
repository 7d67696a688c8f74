// Fusion chosen from the op IR: the host finds, in a composed op's IR, the unit
//   relu_conv2d(x, wd){depthwise} | conv2d(relu(x), wd){depthwise}  →  conv2d(·, wp){1×1}  →  batch_norm(·, mean, var)
// (no affine map), each value inside it used once and not the op's output, and runs it as one
// fused op (EspalierCore's Graph.fusedSeparableUnit). It matches primitives and shapes, never
// an op's name: a third-party op built from the same primitives is fused too.
//
// How a build is fused: the op's IR for the input shape is known before its build (the first
// build's, or a dry trace), so the build knows which of its nodes are a unit. While the plugin
// applies them, the members before the batch norm are only recorded (their values pending);
// the batch norm runs the unit. Should the plugin read a pending value (value_view) or use it
// elsewhere, the pending nodes are applied one by one first: the result is always the
// unfused ops' (their reference), only faster when the plugin does what its IR says.

import CEspalierSDK
import EspalierCore

/// One unit of an IR run fused: its nodes in order (ReLU when separate, depthwise, pointwise, batch norm).
public struct FusedUnit: Equatable, Sendable {
    public let nodes: [Int]
}

extension OpIR {
    /// Every ReLU → depthwise → pointwise → batch norm unit of the IR that runs fused.
    public func separableUnits() -> [FusedUnit] {
        var uses = [Int](repeating: 0, count: values.count)
        for n in nodes { for i in n.inputs { uses[i] += 1 } }
        uses[output] += 1
        var producer: [Int: Int] = [:]
        for (k, n) in nodes.enumerated() { producer[n.output] = k }
        func single(_ value: Int) -> Int? { uses[value] == 1 ? producer[value] : nil }
        func attr(_ n: Node, _ name: String, _ fallback: Double) -> Double { n.attributes[name] ?? fallback }

        var units: [FusedUnit] = []
        for (k, bn) in nodes.enumerated() where bn.primitive == "batch_norm" && bn.inputs.count == 3 {
            guard let p = single(bn.inputs[0]) else { continue }
            let pw = nodes[p]
            guard pw.primitive == "conv2d", pw.inputs.count == 2, values[pw.inputs[1]].shape.count == 4,
                  values[pw.inputs[1]].shape[2] == 1, values[pw.inputs[1]].shape[3] == 1,
                  attr(pw, "stride", 1) == 1, attr(pw, "padding", 0) == 0, attr(pw, "groups", 1) == 1,
                  let d = single(pw.inputs[0]) else { continue }
            let dw = nodes[d]
            let x = values[dw.inputs[0]].shape, wd = values[dw.inputs[1]].shape
            guard dw.primitive == "relu_conv2d" || dw.primitive == "conv2d", dw.inputs.count == 2, x.count == 4, wd.count == 4,
                  wd[0] == x[1], wd[1] == 1, attr(dw, "groups", 1) == Double(x[1]), x[1] > 1 else { continue }
            if dw.primitive == "relu_conv2d" {
                units.append(FusedUnit(nodes: [d, p, k]))
            } else if let r = single(dw.inputs[0]), nodes[r].primitive == "relu" {
                units.append(FusedUnit(nodes: [r, d, p, k]))
            }
        }
        return units
    }
}

/// A value a fused build has not computed: the primitive that makes it, from which handles.
struct PendingNode {
    let primitive: String
    let inputs: [es_value?]
    let attributes: [String: Double]
}

extension GraphBuild {
    /// Sets the units this build fuses, from its op's IR for this input shape.
    func fuse(_ units: [FusedUnit]) {
        fusion = [:]
        for u in units { for (i, k) in u.nodes.enumerated() { fusion[k] = (u, i) } }
    }

    /// Applies primitive `name` as a member of a fused unit, when the next node is one and its
    /// inputs are what the unit expects: records it pending (before the batch norm) or runs the
    /// unit (the batch norm). nil: apply it as usual.
    func applyFused(_ name: String, inputs: [es_value?], attributes: [String: Double], ir: OpIR) throws -> es_value? {
        let k = recorder.nodes.count
        guard let (unit, position) = fusion[k], k < ir.nodes.count, ir.nodes[k].primitive == name,
              inputs.count == ir.nodes[k].inputs.count else { return nil }
        if position < unit.nodes.count - 1 {
            // Before the batch norm: the first member reads a computed value, each later one its predecessor's pending value.
            guard position == 0 ? !isPending(inputs[0]) : isPending(inputs[0]), inputs.dropFirst().allSatisfy({ !isPending($0) }) else { return nil }
            let node = ir.nodes[k]
            recorder.pendingNode(name, inputs: try inputs.map { try index($0) }, attributes: attributes, shape: ir.values[node.output].shape, flops: node.flops)
            values.append(nil)
            pending[values.count - 1] = PendingNode(primitive: name, inputs: inputs, attributes: attributes)
            return OpaquePointer(bitPattern: values.count)!
        }
        // The batch norm: gather the unit back from its pending members.
        guard isPending(inputs[0]), let pw = pending[try index(inputs[0])], pw.primitive == "conv2d",
              let dw = pending[try index(pw.inputs[0])] else { return nil }
        var x = dw.inputs[0], relu = dw.primitive == "relu_conv2d"
        if !relu {
            guard let r = pending[try index(x)], r.primitive == "relu" else { return nil }
            x = r.inputs[0]; relu = true
        }
        let before = graph.accountant.currentTotal
        let a = Attributes(primitive: "conv2d", values: dw.attributes)
        let y = try graph.fusedSeparableUnit(try value(x), depthwise: try value(dw.inputs[1]), pointwise: try value(pw.inputs[1]),
                                             stride: try a.int("stride", 1), padding: try a.int("padding", 0), dilation: try a.int("dilation", 1),
                                             reluInput: relu, runningMean: try value(inputs[1]).value, runningVar: try value(inputs[2]).value,
                                             momentum: Float(attributes["momentum"] ?? 0.1), eps: Float(attributes["eps"] ?? 1e-5))
        return try node(y, name, inputs: inputs, attributes: attributes, flops: ir.nodes[k].flops,
                        keptBytes: graph.accountant.currentTotal - before)
    }

    func isPending(_ h: es_value?) -> Bool { (try? index(h)).map { values[$0] == nil } ?? false }

    /// Computes pending value `i` (and the pending values it reads) with the primitives one by one.
    func materialize(_ i: Int) throws -> Variable {
        if let v = values[i] { return v }
        guard let p = pending[i] else { throw HostCallError(ES_ERROR_INVALID_ARGUMENT, "not a value of this graph") }
        let xs = try p.inputs.map { try value($0) }
        let y = try Primitives.apply(p.primitive, graph, xs, p.attributes)
        values[i] = y
        pending[i] = nil
        return y
    }
}
