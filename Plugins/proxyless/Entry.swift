// The ProxylessNAS library ("espalier.proxyless"): the binary gate ("two" mode), the strategy that
// rescales α after each update, and the expected-cost regularizer. This file holds the
// description and the one exported symbol, `espalier_plugin_entry_v1`; the components are in
// BinaryGate.swift, ProxylessStrategy.swift and ExpectedCostRegularizer.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.proxyless",
    version: "1.0.0",
    summary: "ProxylessNAS: binary gates (two sampled ops per edge computed, one used), α rescaling after each update, expected memory/FLOPs cost",
    components: [
        .gate(BinaryGate.self,
              id: BinaryGate.id,
              summary: "ProxylessNAS 'two' mode: per edge two ops sampled from softmax(α) (both run), one chosen by the renormalised pair probabilities (weight 1); dα_i = Σ_j dg_j p̂_j(δ_ij − p̂_i) over the pair; evaluation: argmax α",
              flags: [.sampled, .hard],
              granularities: .ops),
        .strategy(ProxylessStrategy.self, id: ProxylessStrategy.id,
                  summary: "ProxylessNAS search: first-order bilevel steps with the binary gate; after each α update the sampled pair is shifted so unsampled ops keep their probability; derives with the DARTS rule on softmax(α)",
                  params: [
                      .int("warmup_epochs", default: 0, doc: "weight-only steps for this many epochs before the architecture search", min: 0),
                      .bool("keep_unsampled", default: true, doc: "also undo the optimiser's change to unsampled α (Adam momentum, weight decay), so their probabilities stay exactly"),
                  ],
                  requires: [.archParams, .sampledGate, .hardGate])
            .bringing(SearchMethod(name: "proxyless", summary: "ProxylessNAS (Cai et al. 2019): binary gates (two sampled paths), alpha rescaling, expected-cost regularizer",
                                   gate: "espalier.gate.binary/1",
                                   regularizers: ["espalier.regularizer.expected-cost/1"])),
        .regularizer(ExpectedCostRegularizer.self, id: ExpectedCostRegularizer.id,
                     summary: "ProxylessNAS expected cost: λ(E − ref)/ref with E = Σ gate weight × cost (accountant bytes or FLOPs per candidate)",
                     params: [
                         .choice("cost", default: "memory", choices: ["memory", "flops"], doc: "which costs: the accountant's bytes per candidate, or its forward FLOPs"),
                         .choice("form", default: "add", choices: ["add", "mul"], doc: "add: λ(E − ref)/ref; mul (CE·a·(log E/log ref)^b) needs the step's CE, which ABI v1 does not give a regularizer, and is refused"),
                         .double("lambda", default: 0.2, doc: "weight of the term (ProxylessNAS's reg_lambda)", min: 0),
                         .double("ref", default: 0, doc: "reference cost in bytes or FLOPs; 0 = the expected cost at the first step", min: 0),
                     ],
                     targets: .gateWeights),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
