// A trained network as one safetensors file: every weight and every buffer (batch-norm
// statistics, by the owner path each was allocated under: "cell0/pre0/bn/running_mean") by its
// name relative to the owner path the network was built under, and the network's
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
        func relative(_ name: String) -> String {
            ownerPrefix.isEmpty || !name.hasPrefix(ownerPrefix + "/") ? name : String(name.dropFirst(ownerPrefix.count + 1))
        }
        var seen: [String: Int] = [:]
        return parameters.map { (relative($0.name), $0.value) } + buffers.map { t in
            // Every buffer has an owner of its own; a second one under the same owner (not made by
            // this host) gets "#2", so names stay unique.
            let name = relative(t.accountant.ownerPath(t.storage.owner))
            seen[name, default: 0] += 1
            return (seen[name]! == 1 ? name : "\(name)#\(seen[name]!)", t)
        }
    }

    /// Models saved before buffers had names hold them as "buffers/00000", … in order.
    var legacyNamedTensors: [(String, Tensor)] {
        namedTensors.prefix(parameters.count) + buffers.enumerated().map { (String(format: "buffers/%05d", $0.offset), $0.element) }
    }

    /// Loads every tensor of `file` into the model (names as `namedTensors`, or the legacy buffer names).
    func loadTensors(from file: SafeTensorsFile) throws {
        try file.load(into: file.tensors["buffers/00000"] != nil ? legacyNamedTensors : namedTensors, strict: true)
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
