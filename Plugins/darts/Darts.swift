// The DARTS library ("espalier.darts"): the 8 candidate ops of the DARTS search space as composed
// ops, and the DARTS bilevel strategy. This file holds the description and the one exported
// symbol, `espalier_plugin_entry_v1`; the ops are in DartsOps.swift, the strategy in
// DartsStrategy.swift.

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.darts",
    version: "1.0.0",
    summary: "DARTS: the 8 candidate ops of the DARTS space (composed from host primitives) and the bilevel strategy",
    components: [
        .op(NoneOp.self, id: NoneOp.id,
            summary: "none: zeros of shape (N, C, ceil(H/s), ceil(W/s)); C_in == C_out"),
        .op(MaxPoolOp.self, id: MaxPoolOp.id,
            summary: "max_pool_3x3: 3x3 max pooling, stride s, padding 1; search network (affine 0): followed by BN(affine=False) as in DARTS MixedOp; evaluation network (affine 1): no BN"),
        .op(AvgPoolOp.self, id: AvgPoolOp.id,
            summary: "avg_pool_3x3: 3x3 average pooling, stride s, padding 1, count_include_pad=False; search network (affine 0): followed by BN(affine=False) as in DARTS MixedOp; evaluation network (affine 1): no BN"),
        .op(SkipConnectOp.self, id: SkipConnectOp.id,
            summary: "skip_connect: identity at stride 1; FactorizedReduce at stride 2 (ReLU, two 1x1 stride-2 convs C->C/2, the second on x[:,:,1:,1:], concat, BN; C and H, W even)"),
        .op(SepConv3x3Op.self, id: SepConv3x3Op.id,
            summary: "sep_conv_3x3: (ReLU, depthwise 3x3, 1x1, BN) twice, stride on the first depthwise conv, padding 1"),
        .op(SepConv5x5Op.self, id: SepConv5x5Op.id,
            summary: "sep_conv_5x5: (ReLU, depthwise 5x5, 1x1, BN) twice, stride on the first depthwise conv, padding 2"),
        .op(DilConv3x3Op.self, id: DilConv3x3Op.id,
            summary: "dil_conv_3x3: ReLU, depthwise 3x3 dilation 2 padding 2 (stride s), 1x1, BN"),
        .op(DilConv5x5Op.self, id: DilConv5x5Op.id,
            summary: "dil_conv_5x5: ReLU, depthwise 5x5 dilation 2 padding 4 (stride s), 1x1, BN"),
        .strategy(DartsStrategy.self, id: DartsStrategy.id,
                  summary: "DARTS bilevel search: architecture step on a validation batch, then weight step on a training batch; the host derives with the DARTS rule",
                  params: [
                      .choice("order", default: "first", choices: ["first", "second"],
                              doc: "first: architecture gradient at the current weights; second: through one unrolled weight step"),
                      .int("warmup_epochs", default: 0, doc: "weight-only steps for this many epochs before the bilevel search", min: 0),
                  ],
                  requires: .archParams)
            .bringing(SearchMethod(name: "darts", summary: "DARTS (Liu et al. 2019): softmax-relaxed cells, bilevel architecture and weight steps (first order; strategy.order=second)")),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
