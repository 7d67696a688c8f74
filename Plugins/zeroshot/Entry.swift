// The "espalier.zeroshot" library: zero-shot ranking by the NNGP kernel (ETENAS; Rumiantsev &
// Coates, 2023) as a strategy of its own, and Zero-One-Shot (Half Search Space), which prunes
// the space with it (Algorithm 1) or a random mask before a one-shot search. This file holds the
// description and the one exported symbol, `espalier_plugin_entry_v1`; the score is in
// NNGPScore.swift, the ranking through the search services in ZeroShotRanker.swift, the
// strategies in EtenasStrategy.swift and ZeroOneShotStrategy.swift.

import EspalierPluginKit

private let rankingParams: [ParamSpec] = [
    .int("batches", default: 3, doc: "training batches whose logits estimate the NNGP kernel (the paper: 3 of 128 = 384 images)", min: 1),
    .int("repeats", default: 1, doc: "re-initialisations averaged per comparison (one seed per repeat, the same for N and every N∖j)", min: 1),
    .choice("prune_state", default: "removed", choices: ["removed", "masked"], doc: "state given to pruned ops: removed (parameters and optimiser state freed) or masked (kept)"),
]

nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.zeroshot",
    version: "1.0.0",
    summary: "Zero-shot NNGP ranking (ETENAS) and Zero-One-Shot: prune the search space before a one-shot search",
    components: [
        .strategy(EtenasStrategy.self, id: EtenasStrategy.id,
                  summary: "ETENAS: no training; ops pruned by the NNGP score r = ‖K‖_F of re-initialised forward passes to one per edge, then edges to two per node; every step ES_STEP_SKIP, stops after the first epoch",
                  params: rankingParams + [
                      .int("partial_channels", default: 1, doc: "PC-DARTS partial channels in the scoring network (ETENAS-PC); a space option the host applies", min: 1, max: 64),
                  ],
                  methods: [
                      DynamicMethod(slot: "zeroshot.score", name: "nngp-frobenius", signature: "double(pointer,int64,int64)",
                                    doc: "‖K‖_F of the sample correlation matrix of a row-major float logits matrix (rows, classes); NaN for NULL or a non-positive shape",
                                    function: nngpScoreMethod),
                  ],
                  requires: .archParams)
            .bringing(SearchMethod(name: "etenas", summary: "ETENAS-style zero-shot: NNGP kernel ranking on re-initialised forward passes, pruned to one op per edge, no training")),
        .strategy(ZeroOneShotStrategy.self, id: ZeroOneShotStrategy.id,
                  summary: "Zero-One-Shot: Algorithm 1 (remove the lowest-NNGP-importance op per edge until the remaining fraction of architectures ≤ xi) or a random mask, then DARTS bilevel first-order steps on the masked space",
                  params: rankingParams + [
                      .double("xi", default: 0.5, doc: "pruning level: stop when Π|E_i| / Π|E_i|₀ ≤ xi; random mode: keep probability of each op", min: 0, max: 1),
                      .choice("mode", default: "zeroshot", choices: ["zeroshot", "random"], doc: "zeroshot: Algorithm 1 with the NNGP ranking; random: keep each op with probability xi, at least one per edge"),
                      .choice("granularity", default: "round", choices: ["round", "op"], doc: "round: Algorithm 1 as published (one op from every edge, then check); op: check after each removal, lowest importance first"),
                      .int("warmup_epochs", default: 0, doc: "weight-only epochs before the architecture is trained (the paper: 15 of 50)", min: 0),
                      .int("partial_channels", default: 1, doc: "K: each edge's ops see C/K channels (PC-DARTS; the paper's setup is 4); a space option the host applies", min: 1, max: 64),
                      .bool("edge_normalization", default: false, doc: "PC-DARTS β edge normalisation (a space option the host applies)"),
                  ],
                  requires: .archParams)
            .bringing(SearchMethod(name: "zero-one-shot", summary: "Zero-One-Shot: zero-shot pruning of the space, then a one-shot search with partial channels K=4 and beta-decay",
                                   regularizers: ["espalier.regularizer.beta-decay/1"],
                                   settings: ["strategy.partial_channels=4"])),
    ])

@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
