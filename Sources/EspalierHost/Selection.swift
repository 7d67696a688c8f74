// Choosing components at run time: a JSON or YAML config file and command-line flags name the
// strategy, gate, ops and regularizers by id, and set their parameters (`--set gate.tau=2`) and
// dynamic methods (`--set tau.schedule=linear-decay`). Flags override the file. Every name is
// checked against the loaded plugins; a mistake is an error that lists what is available.

import EspalierCore
import Foundation
import Yams

/// What the user asked for, before it is checked.
public struct SelectionRequest: Codable, Equatable, Sendable {
    public var strategy: String?
    public var gate: String?
    public var ops: [String]?
    public var regularizers: [String]?
    /// key → value, e.g. "gate.tau" → "2", "tau.schedule" → "linear-decay".
    public var set: [String: String]?

    public init(strategy: String? = nil, gate: String? = nil, ops: [String]? = nil, regularizers: [String]? = nil, set: [String: String]? = nil) {
        self.strategy = strategy; self.gate = gate; self.ops = ops; self.regularizers = regularizers; self.set = set
    }

    /// Reads a config file (`.json`, or YAML for anything else). Values under `set` may be
    /// numbers or booleans; they are kept as text.
    public static func load(file: String) throws -> SelectionRequest {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw EspalierError.config("cannot read config file \(file): check the path")
        }
        let text = String(decoding: data, as: UTF8.self)
        let any: Any?
        do {
            if file.hasSuffix(".json") { any = try JSONSerialization.jsonObject(with: data) }
            else { any = try Yams.load(yaml: text) }
        } catch {
            throw EspalierError.config("\(file) is not valid \(file.hasSuffix(".json") ? "JSON" : "YAML"): \(error)")
        }
        guard let dict = any as? [String: Any] else { throw EspalierError.config("\(file): the top level must be a mapping (strategy, gate, ops, regularizers, set)") }
        let known: Set<String> = ["strategy", "gate", "ops", "regularizers", "set"]
        for key in dict.keys.sorted() where !known.contains(key) {
            throw EspalierError.config("\(file): unknown field '\(key)'; the fields are \(known.sorted().joined(separator: ", "))")
        }
        func string(_ k: String) throws -> String? {
            guard let v = dict[k] else { return nil }
            guard let s = v as? String else { throw EspalierError.config("\(file): '\(k)' must be a component id (text)") }
            return s
        }
        func list(_ k: String) throws -> [String]? {
            guard let v = dict[k] else { return nil }
            if let s = v as? String { return [s] }
            guard let a = v as? [Any], a.allSatisfy({ $0 is String }) else { throw EspalierError.config("\(file): '\(k)' must be a list of component ids") }
            return a.map { $0 as! String }
        }
        var set: [String: String]? = nil
        if let v = dict["set"] {
            guard let m = v as? [String: Any] else { throw EspalierError.config("\(file): 'set' must map parameter names to values") }
            set = m.mapValues { value in
                if let b = value as? Bool { return b ? "true" : "false" }
                return "\(value)"
            }
        }
        return SelectionRequest(strategy: try string("strategy"), gate: try string("gate"), ops: try list("ops"),
                                regularizers: try list("regularizers"), set: set)
    }

    /// `other` wins wherever it says something.
    public func overridden(by other: SelectionRequest) -> SelectionRequest {
        var r = self
        if let s = other.strategy { r.strategy = s }
        if let g = other.gate { r.gate = g }
        if let o = other.ops { r.ops = o }
        if let x = other.regularizers { r.regularizers = x }
        if let s = other.set { r.set = (r.set ?? [:]).merging(s) { _, new in new } }
        return r
    }

    /// Parses `key=value` flags.
    public static func settings(fromFlags flags: [String]) throws -> [String: String] {
        var out: [String: String] = [:]
        for f in flags {
            guard let eq = f.firstIndex(of: "="), eq != f.startIndex else {
                throw EspalierError.config("--set '\(f)' is not of the form key=value (e.g. gate.tau=2)")
            }
            out[String(f[..<eq])] = String(f[f.index(after: eq)...])
        }
        return out
    }
}

/// A checked selection: components, their parameter settings and the chosen dynamic methods.
public struct Selection {
    public struct Choice {
        public let component: Component
        public let settings: [String: String]
        public let key: String   // the prefix its parameters are set with
    }
    public var strategy: Choice?
    public var gate: Choice?
    public var ops: [Choice] = []
    public var regularizers: [Choice] = []
    /// slot → the chosen method.
    public var methods: [String: DynamicMethod] = [:]

    public var all: [Choice] { [strategy, gate].compactMap { $0 } + ops + regularizers }

    /// Checks `request` against `registry`.
    public static func resolve(_ request: SelectionRequest, registry: PluginRegistry) throws -> Selection {
        var s = Selection()
        if let id = request.strategy { s.strategy = Choice(component: try registry.require(id, kind: .strategy), settings: [:], key: "strategy") }
        if let id = request.gate { s.gate = Choice(component: try registry.require(id, kind: .gate), settings: [:], key: "gate") }
        for id in request.ops ?? [] {
            let c = try registry.require(id, kind: .op)
            s.ops.append(Choice(component: c, settings: [:], key: c.shortName))
        }
        for id in request.regularizers ?? [] {
            let c = try registry.require(id, kind: .regularizer)
            s.regularizers.append(Choice(component: c, settings: [:], key: c.shortName))
        }
        let keys = s.all.map(\.key)
        if Set(keys).count != keys.count {
            throw EspalierError.config("two selected components share the short name used for their settings: \(keys.sorted().joined(separator: ", "))")
        }
        let slots = Set(registry.allMethods.map(\.slot))
        for (key, value) in (request.set ?? [:]).sorted(by: { $0.key < $1.key }) {
            if slots.contains(key) {
                let candidates = registry.methods(slot: key)
                guard let m = candidates.first(where: { $0.name == value }) else {
                    throw EspalierError.config("no dynamic method '\(value)' for \(key); available: \(candidates.map(\.name).sorted().joined(separator: ", "))")
                }
                s.methods[key] = m
                continue
            }
            guard let dot = key.firstIndex(of: "."), let idx = s.all.firstIndex(where: { $0.key == String(key[..<dot]) }) else {
                let prefixes = s.all.map { "\($0.key).PARAM" } + slots.sorted()
                throw EspalierError.config("--set \(key): no selected component is called '\(key.split(separator: ".").first ?? "")'; "
                                           + (prefixes.isEmpty ? "select a component first" : "keys are \(prefixes.joined(separator: ", "))"))
            }
            let name = String(key[key.index(after: dot)...])
            let choice = s.all[idx]
            guard let spec = choice.component.params.first(where: { $0.name == name }) else {
                let names = choice.component.params.map(\.name)
                throw EspalierError.config("\(choice.component.id) has no parameter '\(name)'" + (names.isEmpty ? " (it takes none)" : "; its parameters: \(names.joined(separator: ", "))"))
            }
            do { _ = try spec.parse(value) } catch { throw EspalierError.config("\(choice.component.id): \(error)") }
            s.set(value, for: name, in: choice.key)
        }
        return s
    }

    private mutating func set(_ value: String, for name: String, in key: String) {
        func upd(_ c: Choice) -> Choice { c.key == key ? Choice(component: c.component, settings: c.settings.merging([name: value]) { _, n in n }, key: c.key) : c }
        strategy = strategy.map(upd); gate = gate.map(upd)
        ops = ops.map(upd); regularizers = regularizers.map(upd)
    }
}
