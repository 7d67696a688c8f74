// The FiGS library ("espalier.figs"): the per-channel Logistic-Sigmoid gate (FigsGate.swift), the
// DARTS convolutions with channel masks on their intermediate and output channels (FigsOps.swift),
// the expected-cost regularizer (FigsCost.swift) and the search strategy without α
// (FigsStrategy.swift). This file holds the description and the one
// exported symbol, `espalier_plugin_entry_v1`.

import EspalierPluginKit

let opParams: [ParamSpec] = [
    .double("logit_init", default: 2.5, doc: "initial mask logit ν of every channel (2.5: π = σ(ν) ≈ 0.92, FiGS's init)"),
    .bool("masks", default: true, doc: "apply the channel masks; false = the plain op at the widths these settings give, no mask logits (an exported network gets its widths from the host instead)"),
]
let sepParams: [ParamSpec] = opParams + [
    .int("mid_channels", default: 0, doc: "channels of the intermediate layer (0 = C); in a network built from a search's export the host gives ⌊Σπ_mid⌋ instead", min: 0),
]

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.figs",
    version: "1.0.0",
    summary: "FiGS: per-channel Logistic-Sigmoid masks, DARTS convolutions masked per channel, and the expected-cost regularizer",
    components: [
        .gate(FigsGate.self, id: FigsGate.id,
              summary: "FiGS channel masks: m = σ((ν + L)/τ), L ~ Logistic(0,1) from the host RNG (straight-through: 1[ν + L > 0] forward, the sigmoid's gradient); evaluation 1[ν > 0]",
              params: [
                  .double("tau", default: 0.001, doc: "temperature τ of the relaxation (FiGS: 0.001, not annealed)", min: 1e-6, max: 1e3),
                  .bool("straight_through", default: false, doc: "forward the hard mask 1[ν + L > 0] and backward the sigmoid's gradient"),
              ],
              flags: [.sampled],
              granularities: .channels),
        .op(FigsSepConv3x3Op.self, id: FigsSepConv3x3Op.id,
            summary: "sep_conv_3x3 with FiGS channel masks: (ReLU, dw 3x3 stride s, 1x1 C->M, BN, mask_mid), (ReLU, dw 3x3, 1x1 M->C, BN, mask_out); masks from the run's 'channel' gate",
            params: sepParams),
        .op(FigsSepConv5x5Op.self, id: FigsSepConv5x5Op.id,
            summary: "sep_conv_5x5 with FiGS channel masks (as figs_sep_conv_3x3, 5x5 depthwise, padding 2)",
            params: sepParams),
        .op(FigsDilConv3x3Op.self, id: FigsDilConv3x3Op.id,
            summary: "dil_conv_3x3 with a FiGS output mask: ReLU, dw 3x3 dilation 2 (stride s), 1x1, BN, mask_out",
            params: opParams),
        .op(FigsDilConv5x5Op.self, id: FigsDilConv5x5Op.id,
            summary: "dil_conv_5x5 with a FiGS output mask: ReLU, dw 5x5 dilation 2 (stride s), 1x1, BN, mask_out",
            params: opParams),
        .strategy(FigsStrategy.self, id: FigsStrategy.id,
                  summary: "FiGS on the DARTS space: no α (every edge sums its ops, or concatenates them into a 1×1 conv with aggregator=concat), "
                      + "weights-only steps that train the ops' channel masks with them; the host exports ⌊Σπ⌋ channels per mask, per cell, dropping ops whose mask keeps none",
                  params: [
                      .choice("aggregator", default: "sum", choices: ["sum", "concat"],
                              doc: "how a node combines its ops: sum, or FiGS's concat aggregator (concat → 1×1 conv → BN; exported ops keep ⌊Σπ_out⌋ output channels)"),
                      .int("bn_recalibration", default: 20,
                           doc: "host convention: recompute batch-norm statistics over this many training batches before each evaluation "
                               + "(the masks move the ops' outputs; stale running statistics made the concat supernet's evaluation-mode accuracy collapse); 0 = off",
                           min: 0),
                  ],
                  requires: .noArchParams)
            .bringing(SearchMethod(name: "figs", summary: "FiGS (Soni et al.): channel masks on the four DARTS convolutions, summed on every edge, parameter cost",
                                   channelGate: "espalier.gate.figs/1",
                                   regularizers: ["espalier.regularizer.figs-cost/1"],
                                   ops: ["espalier.op.figs_sep_conv_3x3/1", "espalier.op.figs_sep_conv_5x5/1", "espalier.op.figs_dil_conv_3x3/1", "espalier.op.figs_dil_conv_5x5/1"],
                                   settings: ["figs-cost.cost=params"])),
        .regularizer(FigsCostRegularizer.self, id: FigsCostRegularizer.id,
                     summary: "FiGS expected cost: λ·Σ_t Π_parts Σ_i c_i σ(ν_i) over channel-mask targets (parameters per conv: π_out·Σπ_in; FLOPs and bytes per op from the accountant)",
                     params: [
                         .choice("cost", default: "params", choices: FigsCostRegularizer.costs, doc: "which targets count: names ending in /params, /flops or /memory"),
                         .double("lambda", default: 1e-6, doc: "regularization strength λ (sets the size of the found network)", min: 0),
                     ],
                     targets: .gateWeights),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
