// The "espalier.mergenas" library: MergeNAS's merged convolution (MergedConvOp.swift), its
// description and the one exported symbol, `espalier_plugin_entry_v1`. Select it in a search with
// `--merged-op espalier.op.mergenas_conv/1`: on every edge it replaces the candidates its `covers`
// parameter names (α keeps their columns, so genotypes still name the DARTS convolutions).

import EspalierPluginKit

/// Built once, on the first call of the entry, and never freed.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.mergenas",
    version: "1.0.0",
    summary: "MergeNAS: the four DARTS convolutions of an edge merged into one depthwise 9x9 convolution with a shared, masked kernel",
    components: [
        .op(MergedConvOp.self, id: MergedConvOp.id,
            summary: "mergenas_conv: ReLU, depthwise 9x9 (padding 4, stride s) with K = sum_o a_o (mask_o * w) over the covered candidates (a: the edge's mixing weights, build_mixed), 1x1, BN; one shared kernel w (C,1,9,9) per block",
            params: [
                .string("covers", default: MergedConvOp.defaultCovers,
                        doc: "the candidates this op stands for, comma-separated, in the order of its mixing weights; any of sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5"),
                .int("blocks", default: 1,
                     doc: "1: one ReLU-dw-1x1-BN block (the authors' search setting); 2: a second block with its own shared kernel, like DARTS's sep_conv",
                     min: 1, max: 2),
            ])
            .bringing(SearchMethod(name: "mergenas", summary: "MergeNAS (Wang et al.): DARTS with the four convolutions of an edge merged into one masked 9x9 depthwise kernel",
                                   strategy: "espalier.strategy.darts/1",
                                   mergedOps: ["espalier.op.mergenas_conv/1"])),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
