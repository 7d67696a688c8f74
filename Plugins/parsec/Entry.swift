// The "espalier.parsec" library: PARSEC, probabilistic neural architecture search (Casale,
// Gordon & Fusi, 2019). This file holds the description and the one exported symbol,
// `espalier_plugin_entry_v1`; the strategy is in Parsec.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.parsec",
    version: "1.0.0",
    summary: "PARSEC: a prior over op choices, importance-weighted Monte Carlo gradients from sampled children; every computation on one child at a time",
    components: [
        .strategy(ParsecStrategy.self, id: ParsecStrategy.id,
                  summary: "PARSEC: each step samples `samples` children a ~ p(a|pi) = prod_edges softmax(pi_e)[a_e] (pi = the alpha logits), scores each on the validation batch (batch_loss, ABI 1.1), weights them w_s ~ exp(-N*L_s/temperature), ascends pi by prior_lr * sum_s w_s (onehot(a_s) - softmax(pi)), then trains the weights of one child drawn from w (ES_STEP_WEIGHTS_ONLY, the memory of one child); the host derives with the DARTS rule on softmax(pi)",
                  params: [
                      .int("samples", default: 4, doc: "children sampled and scored per step (S)", min: 1),
                      .double("prior_lr", default: 0.05, doc: "step size of the gradient ascent on the prior logits pi (0: pi stays, the estimate is only written into alpha's gradient)", min: 0),
                      .double("temperature", default: 1, doc: "importance weights w_s ~ exp(-N*L_s/temperature); 1 = the batch likelihood of the paper", min: 1e-6),
                      .bool("sample_none", default: true, doc: "children may choose `none` on an edge (the edge then contributes nothing); false: never"),
                  ],
                  requires: .archParams)
            .bringing(SearchMethod(name: "parsec", summary: "PARSEC (Casale et al. 2019): a prior over op choices, sampled children scored per batch, importance-weighted gradient")),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
