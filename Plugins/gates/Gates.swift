// The built-in gates library ("espalier.gates"): its description and the one exported symbol,
// `espalier_plugin_entry_v1`. Everything else is EspalierPluginKit's.

import EspalierPluginKit

/// Built once, on the first call of the entry (Swift globals are initialised lazily and
/// thread-safely), and never freed: every call returns the same pointer.
nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.gates",
    version: "1.0.0",
    summary: "Built-in gates: architecture logits to mixing weights",
    components: [
        .gate(SoftmaxGate.self,
              id: SoftmaxGate.id,
              summary: "DARTS softmax over each edge's candidate ops, with temperature tau",
              params: [
                  .double("tau", default: 1.0, doc: "softmax temperature: weights = softmax(logits / tau)", min: 1e-3, max: 1e3),
              ],
              methods: [
                  DynamicMethod(slot: "tau.schedule", name: "linear-decay",
                                doc: "GDAS: tau = 10 - (10 - 0.1) * step / total",
                                function: { step, total in linearDecayTau(step, total) }),
              ],
              flags: [],
              granularities: .ops),
    ])

/// The plugin's entry: the library's description, or NULL for a host of another ABI major.
@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
