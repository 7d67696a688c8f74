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
//
// A crop read by a convolution is folded into it the same way: the crop is recorded pending, and
// a conv2d of it whose geometry takes the im2col path anyway reads the crop's window of the
// crop's input in place (ConvWindow), so the crop is never stored (FactorizedReduce's
// crop(top 1, left 1) → 1×1 stride-2 convolution). Any other use computes the crop as above.
// This fold does not depend on the batch norms' mode. `OpIR.foldedCrops()` names the crops it folds.

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

    /// A crop of x (N, C, H, W): the window it keeps, when its attributes are integers and inside x.
    static func cropWindow(_ primitive: String, x: [Int], attributes a: [String: Double]) -> ConvWindow? {
        let at = Attributes(primitive: "crop", values: a)
        guard primitive == "crop", x.count == 4, let top = try? at.int("top", 0), let left = try? at.int("left", 0),
              let height = try? at.int("height", x[2] - top), let width = try? at.int("width", x[3] - left) else { return nil }
        let v = ConvWindow(top: top, left: left, height: height, width: width)
        guard v.top >= 0, v.left >= 0, v.height > 0, v.width > 0, v.top + v.height <= x[2], v.left + v.width <= x[3] else { return nil }
        return v
    }

    /// A conv2d of a crop (x the crop's shape) that reads the crop in place: its geometry, with the
    /// window, when it takes the im2col path even without one (a convolution the depthwise or the
    /// pointwise kernels would run is not folded: they are faster than the crop is slow).
    static func convolutionOfCrop(_ primitive: String, x: [Int], w: [Int], attributes a: [String: Double], crop: ConvWindow, plane: [Int]) -> ConvGeometry? {
        guard primitive == "conv2d", var g = geometry(x: x, w: w, attributes: a), g.algorithm == .im2col, w[1] == g.cInPerGroup else { return nil }
        g.h = plane[2]; g.w = plane[3]; g.window = crop
        return g.validate() == nil ? g : nil
    }

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

    /// The crops a build of this IR reads in place (their nodes), by `SeparableUnitRule.convolutionOfCrop`:
    /// crops that no node but such convolutions reads. A crop that is also the op's output, or
    /// that anything else reads, is computed and stored.
    public func foldedCrops() -> [Int] {
        var readers: [Int: [Int]] = [:]
        for (k, n) in nodes.enumerated() { for i in n.inputs { readers[i, default: []].append(k) } }
        return nodes.indices.filter { k in
            let c = nodes[k], x = values[c.inputs[0]].shape
            guard c.inputs.count == 1, c.output != output, let v = SeparableUnitRule.cropWindow(c.primitive, x: x, attributes: c.attributes),
                  let rs = readers[c.output], !rs.isEmpty else { return false }
            return rs.allSatisfy { r in
                let n = nodes[r]
                return n.inputs.count == 2 && n.inputs[0] == c.output && n.inputs[1] != c.output
                    && SeparableUnitRule.convolutionOfCrop(n.primitive, x: values[c.output].shape, w: values[n.inputs[1]].shape,
                                                           attributes: n.attributes, crop: v, plane: x) != nil
            }
        }
    }
}

/// A value a fused build has not computed: the primitive that makes it, from which handles.
struct PendingNode {
    let primitive: String
    let inputs: [es_value?]
    let attributes: [String: Double]
    /// Its FLOPs as the IR records them, and what it is pending as.
    let flops: Int
    let role: Role

    enum Role {
        /// A unit's depthwise or pointwise convolution, with its geometry.
        case depthwise(ConvGeometry), pointwise(ConvGeometry)
        /// A crop a convolution may read in place: the window it keeps.
        case crop(ConvWindow)
    }
    var isDepthwise: Bool { if case .depthwise = role { true } else { false } }
    var window: ConvWindow? { if case .crop(let v) = role { v } else { nil } }
}

extension GraphBuild {
    /// Applies primitive `name` as a member of a unit when it is one: records the depthwise and
    /// the pointwise convolution pending, runs the unit at its batch norm. nil: apply it as usual.
    func applyFused(_ name: String, inputs: [es_value?], attributes: [String: Double]) throws -> es_value? {
        if let folded = try applyCropFold(name, inputs: inputs, attributes: attributes) { return folded }
        guard graph.training, inputs.count >= 2, let first = try? index(inputs[0]) else { return nil }   // evaluation: no unit fuses
        if SeparableUnitRule.isBatchNorm(name, inputs: inputs.count) {
            guard let pw = pending[first], case .pointwise = pw.role, let dw = pending[try index(pw.inputs[0])],
                  case .depthwise(let dg) = dw.role else { return nil }
            let before = graph.accountant.currentTotal, flopsBefore = graph.flops
            let y = try graph.fusedSeparableUnit(try value(dw.inputs[0]), depthwise: try value(dw.inputs[1]), pointwise: try value(pw.inputs[1]),
                                                 stride: dg.stride, padding: dg.padding, dilation: dg.dilation,
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
        return try recordPending(PendingNode(primitive: name, inputs: inputs, attributes: attributes, flops: flops,
                                             role: isDepthwise ? .depthwise(g) : .pointwise(g)), shape: g.outputShape)
    }

    /// A crop of a 4-D value is recorded pending; a conv2d of a pending crop that
    /// `SeparableUnitRule.convolutionOfCrop` takes reads the crop's window of its input in place.
    /// nil: neither (apply it as usual; a pending crop it reads is computed then).
    private func applyCropFold(_ name: String, inputs: [es_value?], attributes: [String: Double]) throws -> es_value? {
        guard let first = inputs.first, let i = try? index(first) else { return nil }
        let x = recorder.values[i].shape
        if inputs.count == 1, let v = SeparableUnitRule.cropWindow(name, x: x, attributes: attributes) {
            let shape = [x[0], x[1], v.height, v.width]
            let flops = try Primitives.flops(name, [x], shape, attributes, training: graph.training)
            return try recordPending(PendingNode(primitive: name, inputs: inputs, attributes: attributes, flops: flops, role: .crop(v)), shape: shape)
        }
        guard inputs.count == 2, let p = pending[i], let crop = p.window, !isPending(inputs[1]) else { return nil }
        let w = recorder.values[try index(inputs[1])].shape
        guard let g = SeparableUnitRule.convolutionOfCrop(name, x: x, w: w, attributes: attributes, crop: crop,
                                                          plane: recorder.values[try index(p.inputs[0])].shape) else { return nil }
        let before = graph.accountant.currentTotal
        let y = try graph.conv2d(try value(p.inputs[0]), try value(inputs[1]), stride: g.stride, padding: g.padding, dilation: g.dilation,
                                 groups: g.groups, window: crop)
        let flops = try Primitives.flops(name, [x, w], y.shape, attributes, training: graph.training)
        return try node(y, name, inputs: inputs, attributes: attributes, flops: flops, keptBytes: graph.accountant.currentTotal - before)
    }

    /// Records `p` in the IR as a node not yet computed, and hands out its value's handle.
    private func recordPending(_ p: PendingNode, shape: [Int]) throws -> es_value {
        recorder.pendingNode(p.primitive, inputs: try p.inputs.map { try index($0) }, attributes: p.attributes, shape: shape, flops: p.flops)
        values.append(nil)
        pending[values.count - 1] = p
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
