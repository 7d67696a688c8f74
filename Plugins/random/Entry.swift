// The "espalier.random" library: random search (Li & Talwalkar, 2019; Yu et al., 2020), the
// baseline every search method must beat. This file holds the description and the one exported
// symbol, `espalier_plugin_entry_v1`; the strategy is in RandomSearch.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.random",
    version: "1.0.0",
    summary: "Random search: uniformly sampled cells, each trained from scratch for the same budget and kept by validation accuracy",
    components: [
        .strategy(RandomSearchStrategy.self, id: RandomSearchStrategy.id,
                  summary: "random search: at the first step of each epoch samples cells uniformly (2 distinct inputs per node, an op uniformly among the non-none candidates not removed), trains each from scratch with train_child and keeps the best validation accuracy; every step is ES_STEP_SKIP; derive returns the best",
                  params: [
                      .int("samples_per_epoch", default: 4, doc: "architectures sampled and trained at the start of each epoch", min: 1),
                      .int("child_steps", default: 100, doc: "SGD steps each sampled architecture is trained from scratch for (train_child)", min: 1),
                  ])
            .bringing(SearchMethod(name: "random", summary: "random search: uniform architectures, each trained from scratch, the best by validation accuracy")),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
