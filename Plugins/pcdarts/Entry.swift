// The PC-DARTS library ("espalier.pcdarts"): its description and the one exported symbol,
// `espalier_plugin_entry_v1`. The strategy is in PCDartsStrategy.swift.

import EspalierPluginKit

nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.pcdarts",
    version: "1.0.0",
    summary: "PC-DARTS: partial channel connections and edge normalisation (Xu et al., 2020)",
    components: [
        .strategy(PCDartsStrategy.self, id: PCDartsStrategy.id,
                  summary: "PC-DARTS: ops see C/K channels of each edge (the rest bypass, then channel shuffle), β edge normalisation; bilevel first order",
                  params: [
                      .int("partial_channels", default: 4, doc: "K: each edge's ops see C/K channels (a space option the host applies; C must be divisible by K)", min: 1, max: 64),
                      .bool("edge_normalization", default: true, doc: "β per edge, softmax over each node's incoming edges; the genotype ranks edges by op weight × β̃"),
                      .int("warmup_epochs", default: 0, doc: "weight-only epochs before the architecture is trained (the paper: 15 of 50)", min: 0),
                  ],
                  requires: .archParams)
            .bringing(SearchMethod(name: "pcdarts", summary: "PC-DARTS (Xu et al. 2020): partial channels K=4 per edge and beta edge normalisation, bilevel first order")),
    ])

@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
