// An op as a graph the host can read: the op IR. A composed op's `build` is traced once per
// (input shape, training or not) into an immutable graph of host primitives — nodes are
// primitives with their attributes, values carry shapes, leaves are the op's input and its
// declared parameters and buffers. Every later build of the same op on the same shape is checked
// against that trace (the primitives, their wiring and every shape), so the tape a run records and
// the IR the host reads can never disagree. A raw op (the plugin's own kernels) is one opaque node
// with its declared output shape and what its backward saves.
//
// Costs are read from the IR, not from names: each node's forward FLOPs follow from its
// primitive's cost column in `Primitives.table` and the shapes (`OpIR.Node.flops`), and each
// node records the bytes its forward kept (the accountant's figure when it was traced).
// `espalier plugins describe OP --graph` prints an op's IR as text (with the units the host runs
// fused, OpIR+Fusion.swift) or DOT.

import EspalierCore
import Foundation

public struct OpIR: Equatable, Sendable {
    /// Where a value comes from.
    public enum Source: Equatable, Sendable {
        /// The op's input x.
        case input
        /// The mixing weights handed to `build_mixed` (MergeNAS).
        case mixingWeights
        /// A declared parameter or buffer, by its name under the op's owner path ("proj.weight").
        case parameter(String)
        case buffer(String)
        /// The output of node i.
        case node(Int)
    }

    public struct Value: Equatable, Sendable {
        public let source: Source
        public let shape: [Int]
    }

    public struct Node: Equatable, Sendable {
        /// A host primitive ("conv2d", …), "gate" (`graph_gate`; its role in `role`) or "raw".
        public let primitive: String
        public let role: String?
        /// Value indices.
        public let inputs: [Int]
        public let attributes: [String: Double]
        /// The value it produces.
        public let output: Int
        /// Forward FLOPs, from the primitive's cost column (0 for gates and raw ops).
        public let flops: Int
        /// Bytes its forward keeps allocated once the op is built (saved for backward, or the
        /// op's output), as the accountant counted them while it was traced.
        public let keptBytes: Int
    }

    /// The op's component id, and the input shape and stride it was traced for.
    public let op: String
    public let stride: Int
    public let training: Bool
    public let values: [Value]
    public let nodes: [Node]
    /// The value the op returns.
    public let output: Int
    /// A raw op: its declared `saves` (ES_OP_SAVES_*); nil for a composed op.
    public let rawSaves: UInt32?

    public var inputShape: [Int] { values.first { $0.source == .input }?.shape ?? [] }
    public var outputShape: [Int] { values[output].shape }
    public var isRaw: Bool { rawSaves != nil }

    /// Forward FLOPs of the whole op.
    public var forwardFlops: Int { nodes.reduce(0) { $0 + $1.flops } }
    /// Bytes the op's forward keeps (for backward, and its output).
    public var keptBytes: Int { nodes.reduce(0) { $0 + $1.keptBytes } }
    /// Learnable parameters the op reads (each counted once).
    public var parameterCount: Int {
        values.reduce(0) { n, v in if case .parameter = v.source { return n + v.shape.reduce(1, *) } else { return n } }
    }
    /// The primitive of every node, in order (gates as "gate:ROLE").
    public var kinds: [String] { nodes.map { $0.role.map { "gate:" + $0 } ?? $0.primitive } }

    /// The first difference from `other`, in words (for the error when a build changes).
    public func difference(from other: OpIR) -> String {
        if values.count != other.values.count || nodes.count != other.nodes.count {
            return "\(other.nodes.count) primitives (\(other.kinds.joined(separator: ", "))) where its IR has \(nodes.count) (\(kinds.joined(separator: ", ")))"
        }
        for (i, (a, b)) in zip(nodes, other.nodes).enumerated() where a.primitive != b.primitive || a.role != b.role || a.inputs != b.inputs {
            return "primitive #\(i) is \(b.primitive)\(b.inputs) where its IR has \(a.primitive)\(a.inputs)"
        }
        for (i, (a, b)) in zip(values, other.values).enumerated() where a != b {
            return "value %\(i) is \(b.source) of shape \(b.shape) where its IR has \(a.source) of shape \(a.shape)"
        }
        return "its output is %\(other.output), the IR's %\(output)"
    }

    // MARK: Text and DOT

    func name(_ i: Int) -> String {
        switch values[i].source {
        case .input: return "%x"
        case .mixingWeights: return "%w"
        case .parameter(let n), .buffer(let n): return "@" + n
        case .node(let k): return "%\(k)"
        }
    }

    static func shapeText(_ s: [Int]) -> String { s.map(String.init).joined(separator: "×") }

    static func number(_ v: Double) -> String { v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v) }

    /// One line per leaf and per node, e.g. `%4 = conv2d(%3, @proj.weight) {padding=0} : 2×8×16×16  flops 32768  kept 8192`.
    public var text: String {
        var lines = ["op \(op) stride \(stride)\(training ? "" : " (evaluation)"): \(Self.shapeText(inputShape)) → \(Self.shapeText(outputShape))"]
        for (i, v) in values.enumerated() {
            switch v.source {
            case .input, .mixingWeights: lines.append("  \(name(i)) : \(Self.shapeText(v.shape))  input")
            case .parameter: lines.append("  \(name(i)) : \(Self.shapeText(v.shape))  parameter")
            case .buffer: lines.append("  \(name(i)) : \(Self.shapeText(v.shape))  buffer")
            case .node: break
            }
        }
        for n in nodes {
            let attrs = n.attributes.isEmpty ? "" : " {" + n.attributes.keys.sorted().map { "\($0)=\(Self.number(n.attributes[$0]!))" }.joined(separator: ", ") + "}"
            let what = n.role.map { "gate[\($0)]" } ?? n.primitive
            lines.append("  \(name(n.output)) = \(what)(\(n.inputs.map(name).joined(separator: ", ")))\(attrs) : \(Self.shapeText(values[n.output].shape))"
                         + "  flops \(n.flops)  kept \(n.keptBytes)")
        }
        lines.append("  return \(name(output))")
        lines.append("  total: \(forwardFlops) forward FLOPs, \(keptBytes) bytes kept, \(parameterCount) parameters")
        if training {   // what the host runs as one op (OpIR+Fusion.swift)
            for u in separableUnits() {
                lines.append("  fused: " + u.nodes.map { name(nodes[$0].output) }.joined(separator: " → ") + "  (depthwise → pointwise → batch norm, one op)")
            }
        }
        return lines.joined(separator: "\n")
    }

    /// Graphviz DOT: leaves as ellipses, primitives as boxes, edges labelled with shapes.
    public var dot: String {
        func quoted(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        var lines = ["digraph op {", "  rankdir=TB;", "  label=\(quoted("\(op) stride \(stride)"));", "  node [fontname=\"Helvetica\"];"]
        var producer: [Int: String] = [:]
        for (i, v) in values.enumerated() {
            guard case .node = v.source else {
                producer[i] = "v\(i)"
                lines.append("  v\(i) [shape=ellipse, label=\(quoted(name(i)))];")
                continue
            }
        }
        for (k, n) in nodes.enumerated() {
            producer[n.output] = "n\(k)"
            let attrs = n.attributes.keys.sorted().map { "\($0)=\(Self.number(n.attributes[$0]!))" }.joined(separator: " ")
            lines.append("  n\(k) [shape=box, label=\(quoted((n.role.map { "gate[\($0)]" } ?? n.primitive) + (attrs.isEmpty ? "" : "\n" + attrs)))];")
            for i in n.inputs { lines.append("  \(producer[i] ?? "v\(i)") -> n\(k) [label=\(quoted(Self.shapeText(values[i].shape)))];") }
        }
        lines.append("  out [shape=ellipse, label=\"output\"];")
        lines.append("  \(producer[output] ?? "v\(output)") -> out [label=\(quoted(Self.shapeText(outputShape)))];")
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }
}

/// Records a build as it runs: one value per handle the build hands out (the same numbering), one
/// node per primitive applied. A node's kept bytes are what its primitive allocated, less its
/// output when nothing kept that alive once the build let go of its values (`ir`).
final class OpIRRecorder {
    private(set) var values: [OpIR.Value] = []
    private(set) var nodes: [OpIR.Node] = []
    /// Per node: its output's storage (weak) when the node allocated it; empty unless `trackKept`.
    private var allocated: [(storage: Weak<Storage>, bytes: Int)?] = []
    /// Whether kept bytes are made exact (a build checked against a known IR needs none).
    let trackKept: Bool

    init(trackKept: Bool = true) { self.trackKept = trackKept }

    final class Weak<T: AnyObject> { weak var object: T?; init(_ o: T) { object = o } }

    func leaf(_ source: OpIR.Source, shape: [Int]) { values.append(OpIR.Value(source: source, shape: shape)) }

    func node(_ primitive: String, role: String? = nil, inputs: [Int], attributes: [String: Double], output: Tensor, flops: Int, keptBytes: Int) {
        nodes.append(OpIR.Node(primitive: primitive, role: role, inputs: inputs, attributes: attributes, output: values.count,
                               flops: flops, keptBytes: keptBytes))
        values.append(OpIR.Value(source: .node(nodes.count - 1), shape: output.shape))
        if trackKept { allocated.append(keptBytes >= output.storage.byteCount ? (Weak(output.storage), output.storage.byteCount) : nil) }
    }

    /// A node whose value a fused unit computes later (OpIR+Fusion.swift): its shape and FLOPs from the IR.
    func pendingNode(_ primitive: String, inputs: [Int], attributes: [String: Double], shape: [Int], flops: Int) {
        nodes.append(OpIR.Node(primitive: primitive, role: nil, inputs: inputs, attributes: attributes, output: values.count, flops: flops, keptBytes: 0))
        values.append(OpIR.Value(source: .node(nodes.count - 1), shape: shape))
        if trackKept { allocated.append(nil) }
    }

    /// Node k, recorded pending, computed after all: what it keeps (`node`'s rule for its output).
    func keep(node k: Int, output: Tensor, keptBytes: Int) {
        let n = nodes[k]
        nodes[k] = OpIR.Node(primitive: n.primitive, role: n.role, inputs: n.inputs, attributes: n.attributes, output: n.output, flops: n.flops, keptBytes: keptBytes)
        if trackKept { allocated[k] = keptBytes >= output.storage.byteCount ? (Weak(output.storage), output.storage.byteCount) : nil }
    }

    /// Whether this build has `ir`'s structure: the same primitives, wiring and shapes (attribute
    /// values may differ: a rate set by a schedule), checked without making an IR of it.
    func matches(_ ir: OpIR, output: Int) -> Bool {
        values == ir.values && output == ir.output && nodes.count == ir.nodes.count
            && zip(nodes, ir.nodes).allSatisfy { $0.primitive == $1.primitive && $0.role == $1.role && $0.inputs == $1.inputs }
    }

    /// The IR; call it after the build's own references to its values are gone.
    func ir(op: String, stride: Int, training: Bool, output: Int, rawSaves: UInt32? = nil) -> OpIR {
        let kept = nodes.enumerated().map { k, n -> OpIR.Node in
            guard k < allocated.count, let a = allocated[k], a.storage.object == nil else { return n }
            return OpIR.Node(primitive: n.primitive, role: n.role, inputs: n.inputs, attributes: n.attributes, output: n.output,
                             flops: n.flops, keptBytes: n.keptBytes - a.bytes)
        }
        return OpIR(op: op, stride: stride, training: training, values: values, nodes: kept, output: output, rawSaves: rawSaves)
    }
}
