// The discrete network as an ONNX model (opset 13, IR 7): what `espalier export` writes. The
// network's own layers (stem, cell inputs, node aggregators, classifier) are written here, layer by
// layer beside their forward in DiscreteNetwork.swift; every op of every cell is written from its
// evaluation-mode IR (ONNXBuilder.op), so a composed op, built-in or third-party, exports with no
// work by its author, and a raw op is refused by name. Evaluation form only: no drop-path, no
// auxiliary head. Input `image` (N, C, H, W) with a symbolic batch N, output `logits` (N, classes);
// the input is normalised outside the model (the metadata says how). Values and initializers are
// named by the model's owner paths, the names model.safetensors uses for the parameters.

import EspalierCore
import EspalierHost
import Foundation

extension DiscreteNetwork {
    /// The network as an ONNX model; `metadata` becomes its metadata_props (after the
    /// description's own: genotype, input shape, class count).
    public func onnxModel(accountant: MemoryAccountant, metadata: [(key: String, value: String)] = []) throws -> ONNX.Model {
        let d = description
        let b = ONNXBuilder(name: "espalier-network", stripPrefix: ownerPrefix)
        let w = ONNXLayers(builder: b, accountant: accountant)
        b.addInput("image", dims: [.symbol("N"), .size(d.inputChannels), .size(d.imageSize), .size(d.imageSize)])
        var x = (name: "image", shape: [1, d.inputChannels, d.imageSize, d.imageSize])
        x = w.batchNorm(stemBN, w.conv(stemConv, x))
        var s0 = x, s1 = x
        for (i, cell) in cells.enumerated() {
            let out = try cell.onnx(w, s0, s1, index: i)
            s0 = s1; s1 = out
        }
        b.addOutput(w.classifier(classifier, s1), dims: [.symbol("N"), .size(d.classes)])
        var model = ONNX.Model(graph: b.graph)
        model.metadata = [("espalier.genotype", d.genotype.jsonText()),
                          ("espalier.input_shape", "[\(d.inputChannels), \(d.imageSize), \(d.imageSize)]"),
                          ("espalier.class_count", String(d.classes))] + metadata
        return model
    }
}

/// Writes the host's own layers (Conv2d, BatchNorm2d and the cell inputs) into an ONNX graph,
/// tracking each value's shape (batch 1 stands for N).
struct ONNXLayers {
    typealias Value = (name: String, shape: [Int])
    let builder: ONNXBuilder
    let accountant: MemoryAccountant

    func conv(_ m: Conv2d, _ x: Value) -> Value {
        let b = builder, k = m.weight.shape, scope = b.savedName(accountant.ownerPath(m.owner))
        let y = b.node("Conv", name: scope, [x.name, b.initializer(b.savedName(m.weight.name), m.weight.value)], [
            .ints("kernel_shape", [k[2], k[3]]), .ints("strides", [m.stride, m.stride]), .ints("pads", Array(repeating: m.padding, count: 4)),
            .ints("dilations", [m.dilation, m.dilation]), .int("group", m.groups),
        ])
        func size(_ n: Int, _ kk: Int) -> Int { (n + 2 * m.padding - m.dilation * (kk - 1) - 1) / m.stride + 1 }
        return (y, [x.shape[0], k[0], size(x.shape[2], k[2]), size(x.shape[3], k[3])])
    }

    func batchNorm(_ m: BatchNorm2d, _ x: Value) -> Value {
        let b = builder, scope = b.savedName(accountant.ownerPath(m.owner)), c = x.shape[1]
        let gamma = m.gamma.map { b.initializer(b.savedName($0.name), $0.value) } ?? b.floats(scope + "/ones", shape: [c], [Float](repeating: 1, count: c))
        let beta = m.beta.map { b.initializer(b.savedName($0.name), $0.value) } ?? b.floats(scope + "/zeros", shape: [c], [Float](repeating: 0, count: c))
        let y = b.node("BatchNormalization", name: scope, [x.name, gamma, beta, b.initializer(scope + "/running_mean", m.runningMean),
                                                         b.initializer(scope + "/running_var", m.runningVar)], [.float("epsilon", m.eps)])
        return (y, x.shape)
    }

    /// Global average pooling, flattened, then the linear layer: the output `logits`.
    func classifier(_ m: Linear, _ x: Value) -> String {
        let b = builder
        let pooled = b.node("Flatten", name: "classifier/flatten", [b.node("GlobalAveragePool", name: "classifier/pool", [x.name])], [.int("axis", 1)])
        return b.node("Gemm", name: "logits", [pooled, b.initializer(b.savedName(m.weight.name), m.weight.value)]
                          + (m.bias.map { [b.initializer(b.savedName($0.name), $0.value)] } ?? []), [.int("transB", 1)])
    }

    func relu(_ x: Value, scope: String) -> Value { (builder.node("Relu", name: scope + "/relu", [x.name]), x.shape) }

    /// A cell's input preprocessing: ReLU → 1×1 conv → BN, or FactorizedReduce (two stride-2 1×1
    /// convs, the second on x[:, :, 1:, 1:], concatenated, then BN).
    func cellInput(_ m: Module & CellInput, _ x: Value, scope: String) throws -> Value {
        if let r = m as? ReLUConvBN { return batchNorm(r.bn, conv(r.conv, relu(x, scope: scope))) }
        guard let f = m as? FactorizedReduce else { throw EspalierError.config("ONNX export: \(scope) is a \(type(of: m)), which has no ONNX form") }
        let r = relu(x, scope: scope)
        let a = conv(f.conv1, r)
        let b = builder
        let shifted = b.node("Slice", name: scope + "/shift", [r.name, b.ints(scope + "/shift/starts", [1, 1]),
                                                                b.ints(scope + "/shift/ends", [Int(Int32.max), Int(Int32.max)]), b.ints(scope + "/shift/axes", [2, 3])])
        let c = conv(f.conv2, (shifted, [r.shape[0], r.shape[1], r.shape[2] - 1, r.shape[3] - 1]))
        let joined = b.node("Concat", name: scope + "/concat", [a.name, c.name], [.int("axis", 1)])
        return batchNorm(f.bn, (joined, [a.shape[0], a.shape[1] + c.shape[1], a.shape[2], a.shape[3]]))
    }
}

extension DiscreteCell {
    /// The cell written into an ONNX graph, as `forward` computes it in evaluation mode.
    func onnx(_ w: ONNXLayers, _ s0: ONNXLayers.Value, _ s1: ONNXLayers.Value, index: Int) throws -> ONNXLayers.Value {
        let b = w.builder, name = "cell\(index)"
        var states = [try w.cellInput(pre0, s0, scope: name + "/pre0"), try w.cellInput(pre1, s1, scope: name + "/pre1")]
        for i in 0..<nodes {
            var hs: [ONNXLayers.Value] = []
            for k in ops.indices where nodeOf[k] == i {
                let x = states[inputs[k]]
                let (y, shape) = try b.op(ops[k], input: x.name, inputShape: x.shape, scope: b.savedName(ops[k].ownerPath),
                                          where: "cell \(index), node \(i), edge \(k) (\(ops[k].component.id))")
                hs.append((y, shape))
            }
            let scope = "\(name)/node\(i)"
            if hs.isEmpty {
                // A node no op survived on is zero, at the cell's output size.
                let s = reduction ? 2 : 1, x = states[0]
                let zero = try Primitives.onnx["zeros_like"]!(b, ONNXArgs(name: scope + "/zeros", inputs: [x.name], shapes: [x.shape], output: [],
                                                                            attributes: ["stride": Double(s)]))
                states.append((zero, [x.shape[0], x.shape[1], (x.shape[2] + s - 1) / s, (x.shape[3] + s - 1) / s]))
                continue
            }
            if let agg = aggregators.isEmpty ? nil : aggregators[i] {
                let joined = hs.count == 1 ? hs[0] : (b.node("Concat", name: scope + "/concat/join", hs.map(\.name), [.int("axis", 1)]),
                                                       [hs[0].shape[0], hs.reduce(0) { $0 + $1.shape[1] }, hs[0].shape[2], hs[0].shape[3]])
                states.append(w.batchNorm(agg.bn, w.conv(agg.conv, joined)))
                continue
            }
            states.append(hs.count == 1 ? hs[0] : (b.node(hs.count == 2 ? "Add" : "Sum", name: scope + "/sum", hs.map(\.name)), hs[0].shape))
        }
        let parts = concat.map { states[$0] }
        let out = b.node("Concat", name: name + "/concat", parts.map(\.name), [.int("axis", 1)])
        return (out, [parts[0].shape[0], parts.reduce(0) { $0 + $1.shape[1] }, parts[0].shape[2], parts[0].shape[3]])
    }
}
