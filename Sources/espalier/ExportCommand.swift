// `espalier export`: a trained network as an ONNX model (DiscreteNetwork+ONNX.swift), with the
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
        abstract: "Write a network saved by `espalier train` as an ONNX model (opset 13) that ONNX Runtime and other runtimes run.")
    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "model.safetensors written by `espalier train` (or the folder holding it).") var model: String
    @Option(help: "The .onnx file to write (default: model.onnx beside the model).") var out: String?
    @Option(help: "ONNX opset; 13 is the one written.") var opset = 13

    func run() throws {
        guard opset == Int(ONNX.opset) else { throw ValidationError("--opset \(opset): Espalier writes opset \(ONNX.opset) (IR \(ONNX.irVersion)); leave --opset out") }
        var path = model
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            path = (path as NSString).appendingPathComponent("model.safetensors")
        }
        let target = out ?? ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("model.onnx")
        let context = HostContext()
        let registry = dirs.loadRegistry(context: context)
        let acc = MemoryAccountant()
        context.begin(accountant: acc, seed: 0)
        let written = try ONNXExport.write(modelAt: path, to: target, registry: registry, context: context)
        print(ONNXExport.summary(target, written))
    }
}

/// The export of a network to a file: shared by `espalier export` and `espalier train --onnx`.
enum ONNXExport {
    typealias Written = (nodes: Int, initializers: Int, bytes: Int, inputShape: String)

    static func write(modelAt path: String, to target: String, registry: PluginRegistry, context: HostContext) throws -> Written {
        let file = try SafeTensorsFile.read(path: path)
        if file.metadata["espalier.pruned"] != nil {
            throw EspalierError.config("\(path) is a pruned hyper-connected network (`espalier train-pruned`); ONNX export covers the networks `espalier train` writes")
        }
        let (net, meta) = try context.accountant.withOwner("export") { try DiscreteNetwork.load(path: path, registry: registry, context: context) }
        return try write(net, modelMetadata: meta, to: target, accountant: context.accountant)
    }

    /// Writes `net`, with the data metadata its model file has (normalisation, class names, dataset).
    static func write(_ net: DiscreteNetwork, modelMetadata meta: [String: String], to target: String, accountant: MemoryAccountant) throws -> Written {
        var metadata: [(key: String, value: String)] = [("espalier.version", Espalier.version)]
        for key in [ModelDataMetadata.normalizationKey, ModelDataMetadata.classesKey, ModelDataMetadata.datasetKey] {
            if let v = meta[key] { metadata.append((key, v)) }
        }
        let model = try net.onnxModel(accountant: accountant, metadata: metadata)
        let bytes = model.serialized
        try AtomicFile.write(Data(bytes), to: target)
        let d = net.description
        return (model.graph.nodes.count, model.graph.initializers.count, bytes.count, "(N, \(d.inputChannels), \(d.imageSize), \(d.imageSize))")
    }

    static func summary(_ target: String, _ w: Written) -> String {
        "written: \(target) (\(w.nodes) nodes, \(w.initializers) initializers, \(formatBytes(w.bytes))); input 'image' \(w.inputShape), "
            + "normalised as its metadata says; output 'logits'"
    }
}
