// Bonsai-Net's pruned hyper-connected network as an ONNX model, beside DiscreteNetwork+ONNX.swift:
// the same stem, layers and classifier writers, and each cell as `SearchCell.forward` computes it
// in evaluation mode with every mixing weight 1 (`sumOps`): its first state the sum of its
// surviving inter-cell inputs, each preprocessed; every surviving op of every edge summed into its
// node (a node with none is zero); the last `multiplier` states concatenated. Ops are written from
// their IR (ONNXBuilder.op). Spaces this form does not cover (partial channels, merged ops, the
// concat aggregator, learnable op scales) are refused by name.

import EspalierCore
import EspalierHost
import Foundation

extension PrunedNetwork {
    /// The pruned network as an ONNX model (input `image` of `imageSize`², output `logits`).
    public func onnxModel(accountant: MemoryAccountant, imageSize: Int, metadata: [(key: String, value: String)] = []) throws -> ONNX.Model {
        let space = net.space
        let b = ONNXBuilder(name: "espalier-pruned-network", stripPrefix: ownerPrefix)
        let w = ONNXLayers(builder: b, accountant: accountant)
        b.addInput("image", dims: [.symbol("N"), .size(space.inputChannels), .size(imageSize), .size(imageSize)])
        let stem = w.batchNorm(net.stemBN, w.conv(net.stemConv, ("image", [1, space.inputChannels, imageSize, imageSize])))
        var outputs = [stem]
        for (i, cell) in net.cells.enumerated() {
            outputs.append(try cell.prunedONNX(w, earlier: space.hyperSources(cell: i).map { outputs[$0 + 1] }, outputs[i]))
        }
        b.addOutput(w.classifier(net.classifier, outputs.last!), dims: [.symbol("N"), .size(space.classes)])
        var model = ONNX.Model(graph: b.graph)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        model.metadata = [("espalier.pruned", String(decoding: try enc.encode(architecture), as: UTF8.self)),
                          ("espalier.input_shape", "[\(space.inputChannels), \(imageSize), \(imageSize)]"),
                          ("espalier.class_count", String(space.classes))] + metadata
        return model
    }
}

extension SearchCell {
    /// The cell of a pruned hyper-connected network in an ONNX graph (see the file's header).
    func prunedONNX(_ w: ONNXLayers, earlier: [ONNXLayers.Value], _ s1: ONNXLayers.Value) throws -> ONNXLayers.Value {
        let b = w.builder, name = "cell\(index)"
        guard partial == 1, nodeNorms.isEmpty, edges.allSatisfy({ $0.merged.isEmpty && $0.scales.allSatisfy { $0 == nil } }) else {
            throw EspalierError.config("ONNX export: cell \(index) of this pruned network uses partial channels, merged ops, the concat aggregator "
                                       + "or learnable op scales, which its ONNX form does not cover yet")
        }
        // The first state: the sum of the surviving inter-cell inputs (nil when none survives).
        var terms: [ONNXLayers.Value] = []
        for (j, x) in earlier.enumerated() {
            guard let m = inputs[j], inputStates[j] == .active else { continue }
            terms.append(try w.cellInput(m, x, scope: name + "/input\(j)"))
        }
        let first: ONNXLayers.Value? = terms.isEmpty ? nil
            : terms.count == 1 ? terms[0] : (b.node("Sum", name: name + "/inputs", terms.map(\.name)), terms[0].shape)
        var states: [ONNXLayers.Value?] = [first, try w.cellInput(pre1, s1, scope: name + "/pre1")]
        var e = 0
        for n in 0..<nodes {
            var hs: [ONNXLayers.Value] = []
            for h in states {
                defer { e += 1 }
                guard let h else { continue }
                let edge = edges[e]
                for (o, op) in edge.ops.enumerated() {
                    guard let op, edge.states[o] == .active else { continue }
                    let (y, shape) = try b.op(op, input: h.name, inputShape: h.shape, scope: b.savedName(op.ownerPath),
                                              where: "cell \(index), node \(n), edge \(e) (\(op.component.id))")
                    hs.append((y, shape))
                }
            }
            let scope = "\(name)/node\(n)"
            if hs.isEmpty {
                // As zeroNode: the last state's size, halved on a reduction cell's first node.
                let ref = states.last!!, s = reduction && states.count == 2 ? 2 : 1
                let zero = try Primitives.onnx["zeros_like"]!(b, ONNXArgs(name: scope + "/zeros", inputs: [ref.name], shapes: [ref.shape], output: [],
                                                                            attributes: ["stride": Double(s)]))
                states.append((zero, [ref.shape[0], ref.shape[1], (ref.shape[2] + s - 1) / s, (ref.shape[3] + s - 1) / s]))
                continue
            }
            states.append(hs.count == 1 ? hs[0] : (b.node("Sum", name: scope + "/sum", hs.map(\.name)), hs[0].shape))
        }
        let parts = states.suffix(multiplier).map { $0! }
        let out = b.node("Concat", name: name + "/concat", parts.map(\.name), [.int("axis", 1)])
        return (out, [parts[0].shape[0], parts.reduce(0) { $0 + $1.shape[1] }, parts[0].shape[2], parts[0].shape[3]])
    }
}
