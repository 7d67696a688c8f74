// Methods by name (ABI 1.5): a component may bring a search method as users know it ("gdas",
// "betadarts") with its default strategy, gates, ops, regularizers and settings, so that
// `espalier search --method NAME` selects the whole method and any explicit flag overrides one
// default. Also short names: a strategy, gate, op or regularizer may be named by the last word of
// its id (`gdas` for espalier.strategy.gdas/1) wherever that is unique among its kind, with
// "did you mean" for a near miss.

import CEspalierSDK
import Foundation

/// A search method a component brings (`es_method_desc`), checked when its library loads.
public struct SearchMethod: Sendable, Equatable {
    public let name: String
    public let summary: String
    /// The id of the component that brings it.
    public let describedBy: String
    /// Its strategy's id (the describing component's when the description leaves it out).
    public let strategy: String
    public let gate: String?
    public let channelGate: String?
    public let regularizers: [String]
    /// Candidate ops replacing the eight DARTS ops (empty: keep them).
    public let ops: [String]
    public let mergedOps: [String]
    /// "KEY=VALUE", keys as in `--set`, in the order the plugin gave them.
    public let settings: [String]

    public init(name: String, summary: String, describedBy: String, strategy: String, gate: String? = nil, channelGate: String? = nil,
                regularizers: [String] = [], ops: [String] = [], mergedOps: [String] = [], settings: [String] = []) {
        self.name = name; self.summary = summary; self.describedBy = describedBy; self.strategy = strategy; self.gate = gate
        self.channelGate = channelGate; self.regularizers = regularizers; self.ops = ops; self.mergedOps = mergedOps; self.settings = settings
    }

    init(describing p: UnsafePointer<es_method_desc>, by id: String, kind: ComponentKind) throws {
        let d: es_method_desc = try readSized(UnsafeRawPointer(p), what: "\(id)'s method")
        let name = try requiredString(d.name, "\(id)'s method name")
        guard name.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }) else {
            throw PluginLoadError("malformed description: \(id)'s method name '\(name)' must use only a-z, 0-9 and '-'")
        }
        func list(_ items: UnsafePointer<UnsafePointer<CChar>?>?, _ count: UInt32, _ what: String) throws -> [String] {
            guard count <= 256, count == 0 || items != nil else {
                throw PluginLoadError("malformed description: method \(name) of \(id) declares \(count) \(what) but the list is NULL or too long")
            }
            return try (0..<Int(count)).map { try requiredString(items![$0], "method \(name) of \(id): \(what) #\($0)") }
        }
        let strategy: String
        if let s = optionalString(d.strategy) { strategy = s } else {
            guard kind == .strategy else {
                throw PluginLoadError("malformed description: method \(name) of \(id) names no strategy; a method brought by a \(kind.rawValue) must name its strategy's id")
            }
            strategy = id
        }
        let settings = try list(d.settings, d.setting_count, "settings")
        for s in settings where !(s.firstIndex(of: "=").map { $0 != s.startIndex } ?? false) {
            throw PluginLoadError("malformed description: method \(name) of \(id): setting '\(s)' is not KEY=VALUE")
        }
        self.init(name: name, summary: optionalString(d.summary) ?? "", describedBy: id, strategy: strategy, gate: optionalString(d.gate),
                  channelGate: optionalString(d.channel_gate), regularizers: try list(d.regularizers, d.regularizer_count, "regularizers"),
                  ops: try list(d.ops, d.op_count, "ops"), mergedOps: try list(d.merged_ops, d.merged_op_count, "merged ops"),
                  settings: settings)
    }

    /// What it brings, for listings: "strategy gdas, gate gdas, regularizer expected-cost, 2 settings".
    public var brings: String {
        var parts = ["strategy \(Component.shortName(strategy))"]
        if let gate { parts.append("gate \(Component.shortName(gate))") }
        if let channelGate { parts.append("channel gate \(Component.shortName(channelGate))") }
        parts += regularizers.map { "regularizer \(Component.shortName($0))" }
        if !ops.isEmpty { parts.append("\(ops.count) ops") }
        parts += mergedOps.map { "merged op \(Component.shortName($0))" }
        parts += settings
        return parts.joined(separator: ", ")
    }

    /// The settings as a dictionary (a later KEY wins).
    public var settingsByKey: [String: String] {
        var out: [String: String] = [:]
        for s in settings {
            let eq = s.firstIndex(of: "=")!
            out[String(s[..<eq])] = String(s[s.index(after: eq)...])
        }
        return out
    }
}

/// A request with its method's defaults filled in, ready for `Selection.resolve`.
public struct MethodResolution {
    public var method: SearchMethod?
    /// Strategy, gate, ops (merged ops last), regularizers and the user's settings.
    public var request: SelectionRequest
    /// The method's settings, under the user's: `Selection.resolve(_:registry:defaultSettings:)`.
    public var defaultSettings: [String: String]
    /// The channel gate's id (`--channel-gate`, else the method's), or nil.
    public var channelGate: String?
    /// The merged ops' ids (`--merged-op`, else the method's).
    public var mergedOps: [String]
}

extension PluginRegistry {
    /// Every method the loaded components bring, by name (the first of two with one name; the
    /// second is a warning).
    public var searchMethods: [SearchMethod] {
        var seen = Set<String>()
        return components.compactMap(\.method).filter { seen.insert($0.name).inserted }
    }

    /// The method called `name`, or an error with the nearest name and the list.
    public func searchMethod(named name: String) throws -> SearchMethod {
        let all = searchMethods
        if let m = all.first(where: { $0.name == name }) { return m }
        let names = all.map(\.name).sorted()
        var message = "unknown method '\(name)'"
        if let near = nearest(name, among: names) { message += "; did you mean '\(near)'?" }
        message += names.isEmpty ? "; no loaded plugin brings a method (see `espalier plugins`)" : "; the methods are \(names.joined(separator: ", "))"
        throw PluginLoadError(message)
    }

    /// The component a name stands for: its id, its id without the revision, or its short name
    /// (`gdas`) where only one component of `kind` has it. A short name shared by several is
    /// refused naming them; an unknown one gets the nearest name ("did you mean").
    func named(_ name: String, kind: ComponentKind?) throws -> Component {
        let pool = components.filter { kind == nil || $0.kind == kind! }
        let matches = pool.filter { $0.shortName == name || $0.id.split(separator: "/").first.map(String.init) == name }
        if matches.count == 1 { return matches[0] }
        let what = kind.map(\.rawValue) ?? "component"
        if matches.count > 1 {
            let plural = what.hasSuffix("y") ? String(what.dropLast()) + "ies" : what + "s"
            throw PluginLoadError("'\(name)' is ambiguous: \(matches.count) \(plural) are called that (\(matches.map(\.id).sorted().joined(separator: ", "))); give the full id")
        }
        var message = "unknown \(what) '\(name)'"
        if let c = component(id: name) { message = "'\(name)' is a \(c.kind.rawValue), not a \(what)" }
        // Compared with every short name, id and id without revision; suggested by short name
        // where that is unique among the kind (with the id beside it), else by id.
        let unique = Dictionary(grouping: pool, by: \.shortName).filter { $0.value.count == 1 }
        var suggestion: [String: String] = [:]
        for c in pool {
            let short = unique[c.shortName] != nil ? "'\(c.shortName)' (\(c.id))" : "'\(c.id)'"
            suggestion[c.shortName] = suggestion[c.shortName] ?? short
            suggestion[c.id] = "'\(c.id)'"
            if let base = c.id.split(separator: "/").first { suggestion[String(base)] = suggestion[String(base)] ?? "'\(c.id)'" }
        }
        if component(id: name) == nil, let near = nearest(name, among: Array(suggestion.keys)) {
            message += "; did you mean \(suggestion[near]!)?"
        }
        let ids = pool.map(\.id).sorted()
        throw PluginLoadError(message + (ids.isEmpty ? "; no \(what)s are loaded (see `espalier plugins`)" : "; available: \(ids.joined(separator: ", "))"))
    }

    /// `request` with its method's defaults under it: each of strategy, gate, ops, regularizers,
    /// channel gate and merged ops is the user's where given, else the method's; `add_ops` are
    /// appended to the ops (to `defaultOps` when neither the user nor the method names ops).
    /// `defaultOps` (the eight DARTS ops in a search) stand in when nothing names ops.
    public func applyMethod(_ request: SelectionRequest, channelGate: String? = nil, mergedOps: [String] = [],
                            defaultOps: [String]? = nil) throws -> MethodResolution {
        var r = request
        let m = try r.method.map { try searchMethod(named: $0) }
        if let m {
            if r.strategy == nil { r.strategy = m.strategy }
            if r.gate == nil { r.gate = m.gate }
            if r.ops == nil && !m.ops.isEmpty { r.ops = m.ops }
            if r.regularizers == nil && !m.regularizers.isEmpty { r.regularizers = m.regularizers }
        }
        let added = r.addOps ?? []
        if r.ops == nil { r.ops = added.isEmpty ? defaultOps : (defaultOps ?? Self.dartsOps) }
        if !added.isEmpty { r.ops = (r.ops ?? []) + added }
        let merged = try (mergedOps.isEmpty ? m?.mergedOps ?? [] : mergedOps).map { try require($0, kind: .op).id }
        if !merged.isEmpty { r.ops = (r.ops ?? []) + merged }
        let channel = try (channelGate ?? m?.channelGate).map { try require($0, kind: .gate).id }
        var defaults = m?.settingsByKey ?? [:]
        if let m {
            // Settings of the method's own strategy or gate go only to that strategy or gate.
            func same(_ given: String?, _ its: String?) -> Bool {
                guard let given, let its else { return given == its }
                return (try? require(given).id) == (try? require(its).id)
            }
            if !same(r.strategy, m.strategy) { defaults = defaults.filter { !$0.key.hasPrefix("strategy.") } }
            if !same(r.gate, m.gate) { defaults = defaults.filter { !$0.key.hasPrefix("gate.") } }
        }
        return MethodResolution(method: m, request: r, defaultSettings: defaults, channelGate: channel, mergedOps: merged)
    }

    /// The eight DARTS candidate ops, the default ops of a search.
    public static let dartsOps = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
        .map { "espalier.op.\($0)/1" }
}

/// The closest of `candidates` to `name` by edit distance (insertions, deletions, substitutions
/// and swaps of neighbours), if it is close: a typo or two (one for names of up to 3 letters).
func nearest(_ name: String, among candidates: [String]) -> String? {
    let limit = name.count <= 3 ? 1 : 2
    let scored = candidates.map { ($0, editDistance(name, $0)) }.filter { $0.1 <= limit }
    return scored.min { ($0.1, $0.0) < ($1.1, $1.0) }?.0
}

/// Optimal-string-alignment distance: Levenshtein plus transpositions of neighbours.
func editDistance(_ a: String, _ b: String) -> Int {
    let x = Array(a), y = Array(b)
    if x.isEmpty { return y.count }
    if y.isEmpty { return x.count }
    var d = [[Int]](repeating: [Int](repeating: 0, count: y.count + 1), count: x.count + 1)
    for i in 0...x.count { d[i][0] = i }
    for j in 0...y.count { d[0][j] = j }
    for i in 1...x.count {
        for j in 1...y.count {
            let cost = x[i - 1] == y[j - 1] ? 0 : 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1, j > 1, x[i - 1] == y[j - 2], x[i - 2] == y[j - 1] { d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1) }
        }
    }
    return d[x.count][y.count]
}
