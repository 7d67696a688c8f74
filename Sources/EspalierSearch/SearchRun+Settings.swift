// The settings a search hands on to the steps after it: every selected component's resolved
// parameters (defaults, then the run's own), by instance key (id; `id#2` for a component selected
// a second time). genotype.json records them, so `espalier train` builds each op as it was searched.

import EspalierCore
import EspalierHost
import Foundation

extension SearchRun {
    /// Every component's resolved settings by instance key: strategy, gate, channel gate, ops,
    /// merged ops and regularizers, each parameter with the text the run used.
    public func resolvedSettings() throws -> [String: [String: String]] {
        var out: [String: [String: String]] = [:]
        func add(_ id: String, key: String? = nil, _ given: [String: String]) throws {
            let c = try registry.require(id)
            var s = Dictionary(uniqueKeysWithValues: c.params.map { ($0.name, $0.defaultValue) })
            s.merge(given) { _, set in set }
            out[key ?? id] = s
        }
        try add(config.strategy, config.strategySettings)
        try add(config.gate, config.gateSettings)
        if let id = config.channelGate { try add(id, config.channelGateSettings ?? [:]) }
        for id in config.space.ops + config.space.mergedOps { try add(id, config.opSettings[id] ?? [:]) }
        for (id, key) in zip(config.regularizers, Selection.instanceKeys(config.regularizers)) {
            try add(id, key: key, config.regularizerSettings[key] ?? [:])
        }
        return out
    }

    /// The architecture found, with the settings of the search that found it (genotype.json).
    public func deriveWithSettings() throws -> Genotype {
        var g = try derive()
        g.settings = try resolvedSettings()
        return g
    }
}

extension SearchRun {
    /// This epoch's mean architecture loss and each regularizer's mean term (by instance key), for
    /// the epoch log; starts counting anew.
    func takeEpochTerms() -> (arch: Double?, regularizers: [String: Double]?) {
        let arch = position.tally.archLossTotal.count > 0 ? position.tally.archLossTotal.sum / Double(position.tally.archLossTotal.count) : nil
        position.tally.archLossTotal = (0, 0)
        var terms: [String: Double] = [:]
        for (key, r) in zip(Selection.instanceKeys(config.regularizers), regularizers) {
            if let t = r.takeMeanTerm() { terms[key] = t }
        }
        return (arch, terms.isEmpty ? nil : terms)
    }
}
