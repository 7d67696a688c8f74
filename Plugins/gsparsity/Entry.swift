// The GSparsity library ("espalier.gsparsity"): the GSparsity strategy (no α, group pruning)
// and the ProxSGD regularizer it trains with. This file holds the description and the one
// exported symbol, `espalier_plugin_entry_v1`; the components are in GSparsityStrategy.swift and
// ProxSGD.swift. Use: --strategy espalier.strategy.gsparsity/1 --regularizer espalier.regularizer.proxsgd/1.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.gsparsity",
    version: "1.0.0",
    summary: "GSparsity (Chatzimichailidis et al.): one-shot NAS as operation pruning by group sparsity, trained with ProxSGD",
    components: [
        .strategy(GSparsityStrategy.self, id: GSparsityStrategy.id,
                  summary: "GSparsity: no α (every edge sums its ops), weights-only steps, groups with ‖θ_g‖ ≤ threshold removed at the end, "
                      + "any number of ops kept per edge; optional bisection of the regularizer's μ towards a target sparsity",
                  params: [
                      .bool("scale_parameter_free", default: true,
                            doc: "a learnable output scale (init 1, clamped to [0, 1]) for every parameter-free op, part of its group, so pools and skips can be pruned"),
                      .bool("affine_ops", default: true,
                            doc: "host convention: build the ops as the evaluation network has them (BN with γ/β, no BN after pools), so each group has a scale "
                                + "the loss depends on; with DARTS's search ops (false) a conv group's gradient is orthogonal to it and the penalty shrinks every "
                                + "conv group unopposed (the supernet collapsed at μ ≥ 80 in 3 epochs)"),
                      .double("threshold", default: 1e-6, doc: "groups with ‖θ_g‖ ≤ threshold are pruned (paper: 1e-6)", min: 0),
                      .bool("prune", default: true, doc: "remove the groups at or below the threshold at the end of the last epoch"),
                      .double("target_sparsity", default: 0,
                              doc: "sweep: after each epoch move the regularizer's μ by bisection towards this fraction of pruned groups (0 = off)", min: 0, max: 0.999),
                      .double("sparsity_tolerance", default: 0.02, doc: "sweep: |sparsity − target| within which μ is left alone", min: 0, max: 1),
                      .double("mu_start", default: 60, doc: "sweep: μ set on the regularizer at the first epoch", min: 1e-12),
                      .int("bn_recalibration", default: 20,
                           doc: "host convention: recompute batch-norm statistics over this many training batches before each evaluation "
                               + "(ProxSGD moves whole groups fast; stale running statistics make evaluation-mode accuracy collapse); 0 = off",
                           min: 0),
                  ],
                  requires: .noArchParams)
            .bringing(SearchMethod(name: "gsparsity", summary: "GSparsity (Yang et al. 2022): ops summed, ProxSGD group sparsity (lr 0.05; set proxsgd.mu), groups pruned at 1e-3",
                                   regularizers: ["espalier.regularizer.proxsgd/1"],
                                   settings: ["strategy.threshold=1e-3", "proxsgd.lr=0.05"])),
        .regularizer(ProxSGDRegularizer.self, id: ProxSGDRegularizer.id,
                     summary: "ProxSGD with group sparsity: v ← (1−ρ)v + ρg, b = x − v, x̂ = max(0, 1 − μ_g/‖b‖)·b with μ_g = μ/√|g|, x ← x + lr(x̂ − x); "
                         + "owns the weight update (the host runs no SGD), μ_g = 0 for ungrouped weights",
                     params: [
                         .double("mu", default: 60, doc: "regularisation gain μ (paper: 60 with the √|g| normalisation); settable as regularizer.mu", min: 0),
                         .double("lr", default: 1e-3, doc: "constant step size ε (paper: 0.001); 0 = the host's learning rate of the step", min: 0, max: 1),
                         .double("momentum", default: 0.8, doc: "ρ in v ← (1−ρ)v + ρg (paper: 0.8)", min: 1e-6, max: 1),
                         .choice("normalization", default: "sqrt", choices: ["sqrt", "none"], doc: "sqrt: μ_g = μ/√|g| (paper); none: μ_g = μ"),
                         .bool("owns_update", default: true,
                               doc: "true: this step IS the weight update (ProxSGD; the host skips SGD); false: a proximal step x ← max(0, 1 − lr·μ_g/‖x‖)x after SGD, lr the host's"),
                     ],
                     targets: .weightGroup),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
