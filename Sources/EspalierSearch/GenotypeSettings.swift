// Overriding the settings a genotype's ops are built with (`espalier train --set OP.PARAM=V`,
// `--config FILE`): keys name an op of the genotype by its short name (`swish.beta_init`) or its
// id (`org.example.op.swish/1.beta_init`); every key and value is checked against the op's
// description before anything is built.

import EspalierCore
import EspalierHost
import Foundation

extension Genotype {
    /// The component id of each op name the genotype uses (its `op_ids`, else espalier.op.NAME/1).
    public var usedOpIDs: [String: String] {
        let names = Set(normal.map(\.op) + reduce.map(\.op) + (perCell ?? []).flatMap { $0.edges.map(\.op) })
        return Dictionary(uniqueKeysWithValues: names.map { ($0, opIDs?[$0] ?? "espalier.op.\($0)/1") })
    }

    /// The genotype with `overrides` (key `OP.PARAM` → value) applied to its `settings` and to
    /// every per-edge `op_settings` of that op, so they win over what the search recorded.
    public func overridingSettings(_ overrides: [String: String], registry: PluginRegistry) throws -> Genotype {
        var g = self
        let ids = usedOpIDs
        for (key, value) in overrides.sorted(by: { $0.key < $1.key }) {
            let listing = ids.keys.sorted().map { "\($0).PARAM" }.joined(separator: ", ")
            guard let (name, occurrence, param) = Selection.splitKey(key), occurrence == nil else {
                throw EspalierError.config("--set \(key): not of the form OP.PARAM=VALUE; this genotype's ops take \(listing)")
            }
            guard let (opName, id) = ids.first(where: { $0.key == name || $0.value == name }) else {
                throw EspalierError.config("--set \(key): the genotype has no op '\(name)'; its ops take \(listing)")
            }
            let component = try registry.require(id, kind: .op)
            guard let spec = component.params.first(where: { $0.name == param }) else {
                let names = component.params.map(\.name)
                throw EspalierError.config("--set \(key): \(id) has no parameter '\(param)'" + (names.isEmpty ? " (it takes none)" : "; its parameters: \(names.joined(separator: ", "))"))
            }
            do { _ = try spec.parse(value) } catch { throw EspalierError.config("--set \(key): \(id): \(error)") }
            g.settings = g.settings ?? [:]
            g.settings![id, default: [:]][param] = value
            if var cells = g.perCell {
                for c in cells.indices {
                    for k in cells[c].edges.indices where cells[c].edges[k].op == opName && k < cells[c].opSettings.count {
                        cells[c].opSettings[k][param] = value
                    }
                }
                g.perCell = cells
            }
        }
        return g
    }
}
