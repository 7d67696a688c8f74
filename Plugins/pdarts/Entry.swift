// The P-DARTS library ("espalier.pdarts"): the progressive-DARTS strategy. This file holds the
// description and the one exported symbol, `espalier_plugin_entry_v1`; the strategy is in
// PDartsStrategy.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.pdarts",
    version: "1.0.0",
    summary: "P-DARTS (Chen et al., ICCV 2019): progressive stages that deepen the supernet and prune its candidates",
    components: [
        .strategy(PDartsStrategy.self, id: PDartsStrategy.id,
                  summary: "P-DARTS: stages of growing depth (grow), lowest-softmax ops removed per edge at each stage's end, "
                      + "skip-connect dropout per stage, DARTS derivation with a skip-connect limit in the normal cell",
                  params: [
                      .string("stage_cells", default: "5,11,17", doc: "cells of the supernet in each stage (comma-separated; one value per stage)"),
                      .string("stage_ops", default: "5,3,1", doc: "candidates kept per edge at the end of each stage (non-increasing; the last stage never keeps none)"),
                      .string("stage_epochs", default: "auto",
                              doc: "epochs per stage: one value, one per stage, or auto = the run's epochs split evenly (the search stops after the last stage)"),
                      .string("warmup_epochs", default: "0", doc: "weight-only epochs at the start of each stage: one value or one per stage (code: 10 of 25)"),
                      .string("skip_dropout", default: "0.1,0.4,0.7", doc: "dropout rate on skip_connect outputs per stage (one value or one per stage)"),
                      .choice("skip_dropout_schedule", default: "decay", choices: ["decay", "constant"],
                              doc: "decay: the authors' code, rate·(E−e−1)/E in warm-up then rate·exp(−0.2·(e−warm-up)); constant: the rate all stage"),
                      .int("skip_limit", default: 2, doc: "most skip_connects in the derived normal cell (paper: 2)", min: 0),
                      .choice("order", default: "first", choices: ["first", "second"],
                              doc: "first: architecture gradient at the current weights (P-DARTS); second: through one unrolled weight step"),
                  ],
                  requires: .archParams)
            .bringing(SearchMethod(name: "pdarts", summary: "P-DARTS (Chen et al. 2019): stages of growing depth, ops pruned 8 to 5 to 3 to 1, skip-connect dropout and limit")),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
