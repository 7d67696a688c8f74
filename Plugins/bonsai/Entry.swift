// The Bonsai-Net library ("espalier.bonsai"; Geada, Prangle and McGough, "Bonsai-Net: One-Shot
// Neural Architecture Search via Differentiable Pruners"): the saw-wave pruner gate, the
// memory-compression regularizer and the section-by-section strategy that grows the network
// inside a memory budget. This file holds the description and the one exported symbol,
// `espalier_plugin_entry_v1`; the components are in SawWaveGate.swift, Compression.swift and
// BonsaiStrategy.swift. Use: --strategy espalier.strategy.bonsai/1 --gate espalier.gate.sawwave/1
// --regularizer espalier.regularizer.compression/1 --memory-budget …

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.bonsai",
    version: "1.0.0",
    summary: "Bonsai-Net: saw-wave differentiable pruners, a memory-compression regularizer, and growth section by section inside a memory budget",
    components: [
        .gate(SawWaveGate.self, id: SawWaveGate.id,
              summary: "saw-wave pruner: weight = G(w) + S(w), G = 1[w ≥ 0], S = (Mw − ⌊Mw⌋)/M; forward binary (pruned candidates do not run), gradient straight through",
              params: [
                  .double("m", default: 1e5, doc: "saw-wave frequency M (paper: 1e5); S(w) < 1/M", min: 1),
                  .double("clamp", default: 0.5,
                          doc: "|w| bound (paper: 5 · init = 0.5): gradients pushing w beyond ±clamp are dropped; the strategy also clamps α itself; 0 = none",
                          min: 0),
                  .bool("saw_value", default: false,
                        doc: "kept candidates weigh 1 + S(w) (the paper's literal value) instead of exactly 1"),
              ],
              flags: [.hard],
              granularities: [.ops, .inputs]),
        BonsaiComponents.compression,
        BonsaiComponents.strategy
            .bringing(SearchMethod(name: "bonsai", summary: "Bonsai-Net (Geada et al.): saw-wave pruners on the hyper-connected space, grown section by section inside --memory-budget",
                                   gate: "espalier.gate.sawwave/1",
                                   regularizers: ["espalier.regularizer.compression/1"],
                                   settings: ["strategy.hyper_connected=true"])),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
