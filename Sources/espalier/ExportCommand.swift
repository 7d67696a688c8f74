// `espalier export`: a trained network as an ONNX model (DiscreteNetwork+ONNX.swift for `train`'s
// networks, PrunedNetwork+ONNX.swift for `train-pruned`'s), with the
// normalisation, input shape, class count, genotype and Espalier's version in its metadata, so
// the file alone says how to feed it.

import ArgumentParser
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a network saved by `espalier train` or `espalier train-pruned` as an ONNX model (opset 13) that ONNX Runtime and other runtimes run.")
    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "model.safetensors written by `espalier train`, pruned-model.safetensors written by `espalier train-pruned`, or the folder holding it.") var model: String
    @Option(help: "The .onnx file to write (default: model.onnx beside the model).") var out: String?
    @Option(help: "ONNX opset; 13 is the one written.") var opset = 13
    @Option(help: "The input's height and width, for a pruned network saved before `train-pruned` recorded it.") var imageSize: Int?

    func run() throws {
        guard opset == Int(ONNX.opset) else { throw ValidationError("--opset \(opset): Espalier writes opset \(ONNX.opset) (IR \(ONNX.irVersion)); leave --opset out") }
        let path = savedModelFile(model)
        let target = out ?? ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("model.onnx")
        let context = HostContext()
        let registry = dirs.loadRegistry(context: context)
        let acc = MemoryAccountant()
        context.begin(accountant: acc, seed: 0)
        let written = try ONNXExport.write(modelAt: path, to: target, registry: registry, context: context, imageSize: imageSize)
        print(ONNXExport.summary(target, written))
    }
}

/// The export of a network to a file: shared by `espalier export` and `espalier train --onnx`.
enum ONNXExport {
    typealias Written = (nodes: Int, initializers: Int, bytes: Int, inputShape: String)

    /// Where `espalier train-pruned` records the input's height and width.
    static let imageSizeKey = "espalier.image_size"

    static func write(modelAt path: String, to target: String, registry: PluginRegistry, context: HostContext, imageSize: Int? = nil) throws -> Written {
        let (net, meta) = try context.accountant.withOwner("export") { try loadClassifier(path: path, registry: registry, context: context) }
        if let network = net as? DiscreteNetwork { return try write(network, modelMetadata: meta, to: target, accountant: context.accountant) }
        guard let pruned = net as? PrunedNetwork else { throw EspalierError.config("\(path): a \(type(of: net)) has no ONNX form") }
        guard let size = imageSize ?? meta[imageSizeKey].flatMap({ Int($0) }), size > 0 else {
            throw EspalierError.config("\(path) does not record its input size (saved before `train-pruned` did); give it: --image-size N (28 for Fashion-MNIST, 32 for CIFAR)")
        }
        let model = try pruned.onnxModel(accountant: context.accountant, imageSize: size, metadata: dataMetadata(meta))
        return try write(model, to: target, inputShape: "(N, \(pruned.architecture.space.inputChannels), \(size), \(size))")
    }

    /// Espalier's version, and the data metadata of a model file (normalisation, class names, dataset).
    static func dataMetadata(_ meta: [String: String]) -> [(key: String, value: String)] {
        var metadata: [(key: String, value: String)] = [("espalier.version", Espalier.version)]
        for key in [ModelDataMetadata.normalizationKey, ModelDataMetadata.classesKey, ModelDataMetadata.datasetKey] {
            if let v = meta[key] { metadata.append((key, v)) }
        }
        return metadata
    }

    static func write(_ model: ONNX.Model, to target: String, inputShape: String) throws -> Written {
        let bytes = model.serialized
        try AtomicFile.write(Data(bytes), to: target)
        return (model.graph.nodes.count, model.graph.initializers.count, bytes.count, inputShape)
    }

    /// Writes `net`, with the data metadata its model file has (normalisation, class names, dataset).
    static func write(_ net: DiscreteNetwork, modelMetadata meta: [String: String], to target: String, accountant: MemoryAccountant) throws -> Written {
        let d = net.description
        return try write(try net.onnxModel(accountant: accountant, metadata: dataMetadata(meta)), to: target,
                         inputShape: "(N, \(d.inputChannels), \(d.imageSize), \(d.imageSize))")
    }

    static func summary(_ target: String, _ w: Written) -> String {
        "written: \(target) (\(w.nodes) nodes, \(w.initializers) initializers, \(formatBytes(w.bytes))); input 'image' \(w.inputShape), "
            + "normalised as its metadata says; output 'logits'"
    }
}
