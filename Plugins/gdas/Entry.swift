// The GDAS library ("espalier.gdas"): the hard Gumbel gate with its τ schedule, and the GDAS
// strategy. This file holds the description and the one exported symbol,
// `espalier_plugin_entry_v1`; the gate is in GumbelGate.swift, the strategy in GdasStrategy.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.gdas",
    version: "1.0.0",
    summary: "GDAS: a hard Gumbel-max gate (one sampled op per edge runs, straight-through gradient) and its bilevel strategy",
    components: [
        .gate(GumbelGate.self,
              id: GumbelGate.id,
              summary: "GDAS: per edge the op k = argmax((log_softmax(α)+g)/τ), g Gumbel; weights one-hot, only op k runs; straight-through gradient of softmax((log_softmax(α)+g)/τ); evaluation: argmax α",
              params: [
                  .double("tau_max", default: 10, doc: "built-in schedule: τ at step 0 (linear to tau_min at the last step; set_value(\"tau\") or --set tau.schedule=NAME overrides)", min: 1e-3, max: 1e3),
                  .double("tau_min", default: 0.1, doc: "built-in schedule: τ at the last step", min: 1e-3, max: 1e3),
              ],
              methods: [
                  DynamicMethod(slot: "tau.schedule", name: "gdas-linear",
                                doc: "GDAS: tau = 10 - (10 - 0.1) * step / total",
                                function: { step, total in gdasLinearTau(step, total) }),
              ],
              flags: [.sampled, .hard],
              granularities: .ops),
        .strategy(GdasStrategy.self, id: GdasStrategy.id,
                  summary: "GDAS search: first-order bilevel steps with a sampled hard gate (one op per edge runs); derives with the DARTS rule on softmax(α)",
                  params: [
                      .int("warmup_epochs", default: 0, doc: "weight-only steps for this many epochs before the bilevel search", min: 0),
                  ],
                  requires: [.archParams, .sampledGate, .hardGate])
            .bringing(SearchMethod(name: "gdas", summary: "GDAS (Dong and Yang 2019): one Gumbel-sampled op per edge runs, straight-through gradient, tau 10 to 0.1",
                                   gate: "espalier.gate.gdas/1")),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
