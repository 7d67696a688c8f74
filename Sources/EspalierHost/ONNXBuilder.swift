// An ONNX graph being written (ONNX.swift holds the messages): unique value names, initializers
// from the model's tensors, and every composed op exported from its evaluation-mode IR, each host
// primitive by its one ONNX form (`Primitives.onnx`, Primitives+ONNX.swift). A raw op (its own
// kernels) and the search-only primitives (gates, channel masks, mixing weights) have no ONNX form:
// they are refused by name. Values are named by the model's owner paths ("cell3/node2/sep_conv_3x30/conv2d").

import CEspalierSDK
import EspalierCore
import Foundation

public final class ONNXBuilder {
    public private(set) var graph: ONNX.Graph
    private var used: Set<String> = []
    private var initializerNames: Set<String> = []
    /// Dropped from the front of parameter names ("model/"): the names model.safetensors uses.
    public let stripPrefix: String

    public init(name: String, stripPrefix: String = "") {
        graph = ONNX.Graph(name: name)
        self.stripPrefix = stripPrefix
    }

    /// `base`, or `base_2`, `base_3`… when taken.
    public func fresh(_ base: String) -> String {
        var name = base, k = 1
        while used.contains(name) { k += 1; name = "\(base)_\(k)" }
        used.insert(name)
        return name
    }

    /// A saved tensor's name without the model's owner prefix.
    public func savedName(_ name: String) -> String {
        guard !stripPrefix.isEmpty, name.hasPrefix(stripPrefix + "/") else { return name }
        return String(name.dropFirst(stripPrefix.count + 1))
    }

    /// A float initializer named `name` (added once: the same name is the same tensor).
    @discardableResult
    public func initializer(_ name: String, _ t: Tensor) -> String {
        initializer(name, shape: t.shape, t.array)
    }

    @discardableResult
    public func initializer(_ name: String, shape: [Int], _ values: [Float]) -> String {
        if initializerNames.insert(name).inserted {
            used.insert(name)
            graph.initializers.append(ONNX.Tensor(name: name, dims: shape, floats: values))
        }
        return name
    }

    /// A fresh int64 initializer (shapes, slice bounds).
    public func ints(_ base: String, _ values: [Int]) -> String {
        let name = fresh(base)
        initializerNames.insert(name)
        graph.initializers.append(ONNX.Tensor(name: name, dims: [values.count], ints: values.map(Int64.init)))
        return name
    }

    /// A fresh float constant (a scalar when `shape` is []).
    public func floats(_ base: String, shape: [Int], _ values: [Float]) -> String {
        let name = fresh(base)
        initializerNames.insert(name)
        graph.initializers.append(ONNX.Tensor(name: name, dims: shape, floats: values))
        return name
    }

    /// Appends a node named `name` (made unique) whose one output has the node's name.
    @discardableResult
    public func node(_ opType: String, name: String, _ inputs: [String], _ attributes: [ONNX.Attribute] = []) -> String {
        let out = fresh(name)
        graph.nodes.append(ONNX.Node(opType, name: out, inputs: inputs, outputs: [out], attributes: attributes))
        return out
    }

    public func addInput(_ name: String, dims: [ONNX.ValueInfo.Dim]) { used.insert(name); graph.inputs.append(ONNX.ValueInfo(name: name, dims: dims)) }
    public func addOutput(_ name: String, dims: [ONNX.ValueInfo.Dim]) { graph.outputs.append(ONNX.ValueInfo(name: name, dims: dims)) }

    // MARK: Ops from their IR

    /// Writes `op` applied to the value `input` (of `inputShape`) from its evaluation-mode IR, its
    /// values named below `scope`; returns the output's name and shape. `where` names the op's
    /// place in words for errors ("cell 3, node 2, edge 1").
    public func op(_ op: PluginOp, input: String, inputShape: [Int], scope: String, where place: String) throws -> (String, [Int]) {
        let ir = try op.ir(inputShape: inputShape, training: false)
        if ir.isRaw {
            throw EspalierError.config("ONNX export: \(op.component.id) at \(place) is a raw op (its own forward and backward kernels), which has no ONNX form; "
                                       + "write it as a composed op of host primitives (SDK/README.md, \"Your op as the host sees it\"), or keep the network in Espalier")
        }
        var names: [Int: String] = [:]
        for (i, v) in ir.values.enumerated() {
            switch v.source {
            case .input: names[i] = input
            case .parameter(let n), .buffer(let n):
                guard let t = op.leafTensor(n) else { throw EspalierError.invalidArgument("ONNX export: \(op.component.id) has no tensor '\(n)'") }
                names[i] = initializer(savedName(op.ownerPath + "/" + n), t)
            case .mixingWeights:
                throw EspalierError.config("ONNX export: \(op.component.id) at \(place) reads an edge's mixing weights (a search-time op); export a discrete network")
            case .node: break
            }
        }
        for n in ir.nodes {
            guard let emit = Primitives.onnx[n.primitive] else {
                throw EspalierError.config("ONNX export: \(op.component.id) at \(place) applies '\(n.primitive)', which exists only in a search (a gate or a channel mask) "
                                           + "or has no ONNX form; export the network a search found, trained with `espalier train`")
            }
            let inputs = try n.inputs.map { i -> String in
                guard let name = names[i] else { throw EspalierError.invalidArgument("ONNX export: value %\(i) of \(op.component.id) is used before it is made") }
                return name
            }
            let args = ONNXArgs(name: scope + "/" + n.primitive, inputs: inputs, shapes: n.inputs.map { ir.values[$0].shape },
                                output: ir.values[n.output].shape, attributes: n.attributes)
            names[n.output] = try emit(self, args)
        }
        guard let out = names[ir.output] else { throw EspalierError.invalidArgument("ONNX export: \(op.component.id) has no output") }
        return (out, ir.outputShape)
    }
}

/// What a primitive's ONNX form is written from: the node's name, its inputs' names and shapes,
/// its output's shape and its attributes.
public struct ONNXArgs {
    public let name: String
    public let inputs: [String]
    public let shapes: [[Int]]
    public let output: [Int]
    public let attributes: [String: Double]
    public init(name: String, inputs: [String], shapes: [[Int]], output: [Int], attributes: [String: Double]) {
        self.name = name; self.inputs = inputs; self.shapes = shapes; self.output = output; self.attributes = attributes
    }
    func int(_ key: String, _ fallback: Int) -> Int { attributes[key].map { Int($0) } ?? fallback }
}

extension PluginOp {
    /// A declared parameter's or buffer's tensor by the op's own name.
    func leafTensor(_ name: String) -> Tensor? {
        declared.first { $0.parameter.name == ownerPath + "/" + name }?.parameter.value
    }
}
