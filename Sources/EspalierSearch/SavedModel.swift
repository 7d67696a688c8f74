// A trained network as one safetensors file: every weight by its name relative to the owner path
// the network was built under, every buffer (batch-norm statistics) by index, and the network's
// own description as JSON in the metadata under one key, so the file rebuilds the network. Used
// by `DiscreteNetwork` ("espalier.network", `espalier train`) and `PrunedNetwork`
// ("espalier.pruned", `espalier train-pruned`); `loadClassifier` reads either for `espalier eval`.

import EspalierCore
import EspalierHost
import Foundation

protocol SavedModel: AnyObject {
    var parameters: [Parameter] { get }
    var buffers: [Tensor] { get }
    /// The owner path the network was built under; saved names are relative to it.
    var ownerPrefix: String { get }
}

extension SavedModel {
    var namedTensors: [(String, Tensor)] {
        let cut = ownerPrefix.isEmpty ? 0 : ownerPrefix.count + 1
        return parameters.map { (String($0.name.dropFirst($0.name.hasPrefix(ownerPrefix) ? cut : 0)), $0.value) }
            + buffers.enumerated().map { (String(format: "buffers/%05d", $0.offset), $0.element) }
    }

    /// Writes every tensor and `description` (JSON, sorted keys) under `key`, plus `extraMetadata`.
    func writeModel<D: Encodable>(path: String, key: String, description: D, extraMetadata: [String: String]) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var meta = extraMetadata
        meta[key] = String(decoding: try enc.encode(description), as: UTF8.self)
        try SafeTensorsFile(named: Dictionary(uniqueKeysWithValues: namedTensors), metadata: meta).write(path: path)
    }
}

/// The network saved at `path` by `espalier train` or `espalier train-pruned`, rebuilt under owner
/// "model" with its tensors loaded, and the file's metadata.
public func loadClassifier(path: String, registry: PluginRegistry, context: HostContext) throws -> (Classifier, [String: String]) {
    let file = try SafeTensorsFile.read(path: path)
    if file.metadata["espalier.pruned"] != nil {
        let (net, meta) = try PrunedNetwork.load(file, path: path, registry: registry, context: context)
        return (net, meta)
    }
    let (net, meta) = try DiscreteNetwork.load(path: path, registry: registry, context: context)
    return (net, meta)
}
