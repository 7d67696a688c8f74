// Resolves a component's parameters: defaults, then the config file, then `--set` flags, each
// checked against the component's description; unknown names are errors that list the known
// ones. The result is the C array `create` receives, with its strings kept alive.

import CEspalierSDK
import Foundation

final class ResolvedParams {
    let values: UnsafeMutablePointer<es_param_value>
    let count: Int
    private var strings: [UnsafeMutablePointer<CChar>] = []
    /// name → the text that was used (for logs and checkpoints).
    let texts: [String: String]

    init(component: Component, settings: [String: String]) throws {
        let known = Set(component.params.map(\.name))
        for key in settings.keys.sorted() where !known.contains(key) {
            let list = component.params.map(\.name)
            throw PluginLoadError("\(component.id) has no parameter '\(key)'" + (list.isEmpty ? " (it takes none)" : "; its parameters: \(list.joined(separator: ", "))"))
        }
        count = component.params.count
        values = .allocate(capacity: max(1, count))
        var texts: [String: String] = [:]
        for (i, spec) in component.params.enumerated() {
            let text = settings[spec.name] ?? spec.defaultValue
            let parsed: (int: Int64, double: Double)
            do { parsed = try spec.parse(text) } catch { values.deallocate(); throw PluginLoadError("\(component.id): \(error)") }
            let name = strdup(spec.name)!, t = strdup(text)!
            strings += [name, t]
            var v = es_param_value()
            v.struct_size = UInt32(MemoryLayout<es_param_value>.size)
            v.type = [ParamSpec.ValueType.bool: ES_PARAM_BOOL, .int: ES_PARAM_INT, .double: ES_PARAM_DOUBLE, .string: ES_PARAM_STRING, .choice: ES_PARAM_CHOICE][spec.type]!
            v.name = UnsafePointer(name)
            v.int_value = parsed.int
            v.double_value = parsed.double
            v.text = UnsafePointer(t)
            values[i] = v
            texts[spec.name] = text
        }
        self.texts = texts
    }

    deinit {
        values.deallocate()
        strings.forEach { free($0) }
    }
}
