// The "espalier.mergenas" library: its description and the one exported symbol, `espalier_plugin_entry_v1`.
// (Components are added as the method lands.)

import EspalierPluginKit

nonisolated(unsafe) private let descriptor = Plugin.describe(
    name: "espalier.mergenas",
    version: "1.0.0",
    summary: "espalier.mergenas",
    components: [])

@_cdecl("espalier_plugin_entry_v1")
public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
    Plugin.accepts(abi) ? descriptor : nil
}
