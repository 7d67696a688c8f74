// The DropNAS library ("espalier.dropnas"): the grouped-operation-dropout strategy. This file
// holds the description and the one exported symbol, `espalier_plugin_entry_v1`; the strategy is
// in DropNASStrategy.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.dropnas",
    version: "1.0.0",
    summary: "DropNAS (Hong et al., IJCAI 2020): single-level search with grouped operation dropout",
    components: [
        .strategy(DropNASStrategy.self, id: DropNASStrategy.id,
                  summary: "DropNAS: single-level steps; before each, every op of the groups {sep3, sep5, dil3, dil5} and "
                      + "{max, avg, skip, none} of every edge is masked with probability r^(1/|group|) (a group never loses all); "
                      + "after it the kept α are shifted so the dropped ops keep their probability mass",
                  params: [
                      .double("drop_rate", default: 3e-5,
                              doc: "r: each op of a group of n is dropped with probability r^(1/n), so a whole group with probability r (paper: 3e-5)",
                              min: 0, max: 0.99),
                      .int("warmup_epochs", default: 0, doc: "weight-only steps without dropout for this many epochs first", min: 0),
                      .bool("restore_dropped", default: true,
                            doc: "true: dropped ops' α are reset to their pre-step values before the shift; false: as the authors' code, "
                                + "they keep what the optimiser did (momentum, decay) and the kept share of probability is restored"),
                  ],
                  requires: .archParams)
            .bringing(SearchMethod(name: "dropnas", summary: "DropNAS (Hong et al. 2020): grouped op dropout, single-level steps, alpha shift keeping the dropped ops mass")),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
