// The β-DARTS library ("espalier.betadarts"): the beta-decay regularizer and its λ ramp as a
// dynamic method. This file holds the description and the one exported symbol,
// `espalier_plugin_entry_v1`; the regularizer is in BetaDecay.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.betadarts",
    version: "1.0.0",
    summary: "β-DARTS (Ye et al., CVPR 2022): beta-decay regularization of the architecture logits, with any strategy that has α",
    components: [
        .regularizer(BetaDecayRegularizer.self, id: BetaDecayRegularizer.id,
                     summary: "beta-decay: λ_t · Σ over α tensors (normal, reduce) of mean over edges of logsumexp(α_e); "
                         + "λ_t = lambda · epoch / ramp_epochs (authors' code: 50 · epoch / 100); masked and removed candidates are left out",
                     params: [
                         .double("lambda", default: 50, doc: "λ at epoch = ramp_epochs (the authors' code: 50)", min: 0, max: 1e6),
                         .int("ramp_epochs", default: 100,
                              doc: "λ_t = lambda · epoch / ramp_epochs, epoch from 0 (the authors' code: 100, i.e. 50·epoch/100); 0 = the run's epochs",
                              min: 0),
                     ],
                     methods: [
                         DynamicMethod(slot: "lambda.schedule", name: "beta-linear",
                                       doc: "β-DARTS ramp by step: λ = 25 · step / total (the authors' 50·epoch/100 over their 50-epoch search, continuous in steps)",
                                       function: { step, total in betaLinearLambda(step, total) }),
                     ],
                     targets: .arch)
            .bringing(SearchMethod(name: "betadarts", summary: "beta-DARTS (Ye et al. 2022): DARTS with the beta-decay regularizer on the architecture logits",
                                   strategy: "espalier.strategy.darts/1",
                                   regularizers: ["espalier.regularizer.beta-decay/1"])),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
