// Choosing components at run time: a JSON or YAML config file and command-line flags name the
// strategy, gate, ops and regularizers by id, and set their parameters (`--set gate.tau=2`) and
// dynamic methods (`--set tau.schedule=linear-decay`). Flags override the file. Every name is
// checked against the loaded plugins; a mistake is an error that lists what is available.
// Config files are read within limits (ConfigFile): at most 1 MiB, at most 100 000 values once
// YAML aliases are expanded (nine lines of nested aliases would otherwise expand to billions),
// and no key twice in one mapping.

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
    /// A search method by name ("gdas"): its defaults stand wherever this request says nothing
    /// (`PluginRegistry.applyMethod`).
    public var method: String?
    /// Ops added to the others (`--add-op`; the file's `add_ops`), where `ops` replaces them.
    public var addOps: [String]?
    /// The file's `recompute` (none, ops, edges, cells, auto): what the run recomputes in backward
    /// instead of keeping (`--recompute` overrides it). Checked by the command that reads it.
    public var recompute: String?

    public init(strategy: String? = nil, gate: String? = nil, ops: [String]? = nil, regularizers: [String]? = nil, set: [String: String]? = nil,
                method: String? = nil, addOps: [String]? = nil) {
        self.strategy = strategy; self.gate = gate; self.ops = ops; self.regularizers = regularizers; self.set = set
        self.method = method; self.addOps = addOps
    }

    /// Reads a config file (`.json`, or YAML for anything else). Values under `set` may be
    /// numbers or booleans; they are kept as text.
    public static func load(file: String) throws -> SelectionRequest {
        let any = try ConfigFile.read(file)
        guard let dict = any as? [String: Any] else { throw EspalierError.config("\(file): the top level must be a mapping (method, strategy, gate, ops, add_ops, regularizers, set, recompute)") }
        let known: Set<String> = ["method", "strategy", "gate", "ops", "add_ops", "regularizers", "set", "recompute"]
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
        var request = SelectionRequest(strategy: try string("strategy"), gate: try string("gate"), ops: try list("ops"),
                                       regularizers: try list("regularizers"), set: set, method: try string("method"), addOps: try list("add_ops"))
        if let v = dict["recompute"] {
            guard let s = v as? String else { throw EspalierError.config("\(file): 'recompute' must be one of none, ops, edges, cells, auto (text)") }
            request.recompute = s
        }
        return request
    }

    /// `other` wins wherever it says something.
    public func overridden(by other: SelectionRequest) -> SelectionRequest {
        var r = self
        if let s = other.strategy { r.strategy = s }
        if let g = other.gate { r.gate = g }
        if let o = other.ops { r.ops = o }
        if let x = other.regularizers { r.regularizers = x }
        if let s = other.set { r.set = (r.set ?? [:]).merging(s) { _, new in new } }
        if let m = other.method { r.method = m }
        if let a = other.addOps { r.addOps = a }
        if let x = other.recompute { r.recompute = x }
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
/// Settings keys (`--set PREFIX.PARAM=VALUE`) name their component by
///   - its role: `strategy`, `gate`;
///   - its id: `org.vendor.regularizer.entropy/1.weight` (always unambiguous);
///   - its short name: `entropy.weight`, when no other selected component has that short name;
/// and a component selected more than once (the same regularizer twice) takes its occurrence,
/// 1-based, after the name or id: `entropy#2.weight`, `org.vendor.regularizer.entropy/1#2.weight`.
public struct Selection {
    public struct Choice {
        public let component: Component
        public let settings: [String: String]
        /// The prefix its parameters are set with (role, short name or id; `#n` when repeated).
        public let key: String
        /// 1 for the first selection of its id, 2 for the second, …
        public let occurrence: Int

        /// The key of its settings in a run's config: the id, with `#n` from the second occurrence on.
        public var instanceKey: String { Selection.instanceKey(component.id, occurrence: occurrence) }
    }
    public var strategy: Choice?
    public var gate: Choice?
    public var ops: [Choice] = []
    public var regularizers: [Choice] = []
    /// slot → the chosen method.
    public var methods: [String: DynamicMethod] = [:]

    public var all: [Choice] { [strategy, gate].compactMap { $0 } + ops + regularizers }

    /// `id`, or `id#n` for its n-th selection (n ≥ 2).
    public static func instanceKey(_ id: String, occurrence: Int) -> String { occurrence > 1 ? "\(id)#\(occurrence)" : id }

    /// The instance keys of a list of ids, in order (`[a, b, a]` → `[a, b, a#2]`).
    public static func instanceKeys(_ ids: [String]) -> [String] {
        var seen: [String: Int] = [:]
        return ids.map { id in
            seen[id, default: 0] += 1
            return instanceKey(id, occurrence: seen[id]!)
        }
    }

    /// Splits a settings key into the component it names (role, short name or id, with an optional
    /// `#n`) and the parameter: `org.x.regularizer.entropy/1#2.weight` → ("org.x.regularizer.entropy/1", 2, "weight").
    public static func splitKey(_ key: String) -> (name: String, occurrence: Int?, param: String)? {
        let head: Substring, param: Substring
        if let slash = key.firstIndex(of: "/") {
            // An id: everything up to the revision's digits.
            var end = key.index(after: slash)
            while end < key.endIndex, key[end].isASCII, key[end].isNumber { end = key.index(after: end) }
            guard end > key.index(after: slash) else { return nil }
            var rest = key[end...]
            var occurrence: Int? = nil
            if rest.hasPrefix("#") {
                let digits = rest.dropFirst().prefix { $0.isASCII && $0.isNumber }
                guard let n = Int(digits) else { return nil }
                occurrence = n
                rest = rest.dropFirst(1 + digits.count)
            }
            guard rest.hasPrefix("."), rest.count > 1 else { return nil }
            return (String(key[..<end]), occurrence, String(rest.dropFirst()))
        }
        guard let dot = key.firstIndex(of: "."), dot != key.startIndex, key.index(after: dot) < key.endIndex else { return nil }
        head = key[..<dot]; param = key[key.index(after: dot)...]
        if let hash = head.firstIndex(of: "#") {
            guard let n = Int(head[head.index(after: hash)...]) else { return nil }
            return (String(head[..<hash]), n, String(param))
        }
        return (String(head), nil, String(param))
    }

    /// Checks `request` against `registry`. `defaultSettings` (a method's) go under the request's
    /// own: each applies unless the request sets the same key, and only when a selected component
    /// is called what its key names (a method's setting of a regularizer the user replaced is dropped).
    public static func resolve(_ request: SelectionRequest, registry: PluginRegistry, defaultSettings: [String: String] = [:]) throws -> Selection {
        var s = Selection()
        var counts: [String: Int] = [:]
        func choice(_ c: Component, role: String?) -> Choice {
            counts[c.id, default: 0] += 1
            return Choice(component: c, settings: [:], key: role ?? c.shortName, occurrence: counts[c.id]!)
        }
        if let id = request.strategy { s.strategy = choice(try registry.require(id, kind: .strategy), role: "strategy") }
        if let id = request.gate { s.gate = choice(try registry.require(id, kind: .gate), role: "gate") }
        for id in request.ops ?? [] {
            let c = try registry.require(id, kind: .op)
            guard !s.ops.contains(where: { $0.component.id == c.id }) else {
                throw EspalierError.config("op \(c.id) is selected twice; every candidate op appears once on an edge")
            }
            s.ops.append(choice(c, role: nil))
        }
        for id in request.regularizers ?? [] { s.regularizers.append(choice(try registry.require(id, kind: .regularizer), role: nil)) }
        // Display keys: the short name where it is unambiguous, else the id; `#n` for repeated ids.
        func displayKey(_ c: Choice) -> String {
            guard c.key != "strategy" && c.key != "gate" else { return c.key }
            let clash = s.all.contains { $0.component.id != c.component.id && $0.component.shortName == c.component.shortName }
            let base = clash ? c.component.id : c.component.shortName
            return (counts[c.component.id] ?? 1) > 1 ? "\(base)#\(c.occurrence)" : base
        }
        func rekey(_ c: Choice) -> Choice { Choice(component: c.component, settings: c.settings, key: displayKey(c), occurrence: c.occurrence) }
        s.ops = s.ops.map(rekey); s.regularizers = s.regularizers.map(rekey)

        let slots = Set(registry.allMethods.map(\.slot))
        let given = request.set ?? [:]
        let defaults = defaultSettings.filter { given[$0.key] == nil && (slots.contains($0.key) || s.names($0.key)) }
        for (key, value) in defaults.sorted(by: { $0.key < $1.key }) + given.sorted(by: { $0.key < $1.key }) {
            if slots.contains(key) {
                let candidates = registry.methods(slot: key)
                guard let m = candidates.first(where: { $0.name == value }) else {
                    throw EspalierError.config("no dynamic method '\(value)' for \(key); available: \(candidates.map(\.name).sorted().joined(separator: ", "))")
                }
                s.methods[key] = m
                continue
            }
            let (index, name) = try s.target(of: key, slots: slots)
            let choice = s.all[index]
            guard let spec = choice.component.params.first(where: { $0.name == name }) else {
                let names = choice.component.params.map(\.name)
                throw EspalierError.config("\(choice.component.id) has no parameter '\(name)'" + (names.isEmpty ? " (it takes none)" : "; its parameters: \(names.joined(separator: ", "))"))
            }
            do { _ = try spec.parse(value) } catch { throw EspalierError.config("\(choice.component.id): \(error)") }
            s.set(value, for: name, at: index)
        }
        return s
    }

    /// Whether a selected component is called what the settings key `key` names.
    private func names(_ key: String) -> Bool {
        guard let (name, _, _) = Selection.splitKey(key) else { return false }
        return !matching(name).isEmpty
    }

    /// The indices in `all` of the components called `name` (role, id or short name).
    private func matching(_ name: String) -> [Int] {
        let all = self.all
        return all.indices.filter { i in
            let c = all[i]
            return c.component.id == name || (c.key == name && (name == "strategy" || name == "gate"))
                || (c.component.shortName == name && c.component.kind != .strategy && c.component.kind != .gate)
        }
    }

    /// The index in `all` of the component a settings key names, and the parameter name.
    private func target(of key: String, slots: Set<String>) throws -> (Int, String) {
        let keys = all.map { "\($0.key).PARAM" } + slots.sorted()
        let listing = keys.isEmpty ? "select a component first" : "keys are \(keys.joined(separator: ", "))"
        guard let (name, occurrence, param) = Selection.splitKey(key) else {
            throw EspalierError.config("--set \(key): not of the form COMPONENT.PARAM=VALUE; \(listing)")
        }
        let all = self.all
        var matches = matching(name)
        guard !matches.isEmpty else {
            throw EspalierError.config("--set \(key): no selected component is called '\(name)'; \(listing)")
        }
        let ids = Set(matches.map { all[$0].component.id })
        if ids.count > 1 {
            throw EspalierError.config("--set \(key): \(ids.count) selected components are called '\(name)' (\(ids.sorted().joined(separator: ", "))); "
                                       + "name one by its id, e.g. \(ids.sorted()[0]).\(param)")
        }
        if let n = occurrence {
            guard let i = matches.first(where: { all[$0].occurrence == n }) else {
                throw EspalierError.config("--set \(key): '\(name)' is selected \(matches.count) time\(matches.count == 1 ? "" : "s"); #\(n) does not exist")
            }
            matches = [i]
        } else if matches.count > 1 {
            throw EspalierError.config("--set \(key): '\(name)' is selected \(matches.count) times; say which: "
                                       + (1...matches.count).map { "\(name)#\($0).\(param)" }.joined(separator: ", "))
        }
        return (matches[0], param)
    }

    private mutating func set(_ value: String, for name: String, at index: Int) {
        func upd(_ c: Choice) -> Choice { Choice(component: c.component, settings: c.settings.merging([name: value]) { _, n in n }, key: c.key, occurrence: c.occurrence) }
        var i = index
        if strategy != nil { if i == 0 { strategy = strategy.map(upd); return }; i -= 1 }
        if gate != nil { if i == 0 { gate = gate.map(upd); return }; i -= 1 }
        if i < ops.count { ops[i] = upd(ops[i]); return }
        i -= ops.count
        regularizers[i] = upd(regularizers[i])
    }
}

/// Reading a config file within limits: its size, the values it expands to through YAML aliases,
/// and duplicate keys (refused, naming the key and the file).
public enum ConfigFile {
    /// The largest config file read (a config is a few dozen lines).
    public static let maxBytes = 1 << 20
    /// The most values (scalars, mappings, sequences) a config may hold once aliases are expanded.
    public static let maxValues = 100_000

    /// The file's top-level value: JSON for `.json`, YAML otherwise.
    public static func read(_ file: String) throws -> Any? {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file, isDirectory: &isDir), !isDir.boolValue,
              let handle = FileHandle(forReadingAtPath: file) else {
            throw EspalierError.config("cannot read config file \(file): check the path")
        }
        defer { try? handle.close() }
        // Read one byte more than allowed, never the whole of a huge file.
        let data = (try? handle.read(upToCount: maxBytes + 1)) ?? Data()
        guard data.count <= maxBytes else {
            throw EspalierError.config("\(file) is larger than \(maxBytes / 1024) KiB; a config lists components and settings in a few dozen lines")
        }
        let text = String(decoding: data, as: UTF8.self)
        if file.hasSuffix(".json") {
            let value: Any
            do { value = try JSONSerialization.jsonObject(with: data) } catch {
                throw EspalierError.config("\(file) is not valid JSON: \(error)")
            }
            // JSONSerialization keeps the last of two equal keys; JSON is YAML, so look again.
            try checkDepth(text, file: file)
            if let root = try? Yams.compose(yaml: text), let (key, path, line) = duplicateKey(root) {
                throw duplicate(file, key, path, line)
            }
            return value
        }
        return try yaml(text, file: file)
    }

    /// The deepest nesting read: Yams composes nodes recursively, so a file of a few hundred
    /// thousand `[` (or `- - - …`) would overflow the stack. Counted before Yams sees the text:
    /// open flow brackets, and the columns of indentation and `-`/`?`/`:` indicators that start a line.
    public static let maxDepth = 256

    static func checkDepth(_ text: String, file: String) throws {
        var depth = 0, line = 1, column = 0, leading = true
        for b in text.utf8 {
            if b == UInt8(ascii: "\n") { line += 1; column = 0; leading = true; continue }
            if b == UInt8(ascii: "[") || b == UInt8(ascii: "{") { depth += 1 }
            if b == UInt8(ascii: "]") || b == UInt8(ascii: "}") { depth = Swift.max(0, depth - 1) }
            if leading {
                if b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") || b == UInt8(ascii: "-") || b == UInt8(ascii: "?") || b == UInt8(ascii: ":") {
                    column += 1
                } else { leading = false }
            }
            guard depth <= maxDepth, column <= 2 * maxDepth else {
                throw EspalierError.config("\(file) nests deeper than \(maxDepth) levels (line \(line)); a config needs two or three: "
                                           + "write it flat")
            }
        }
    }

    static func duplicate(_ file: String, _ key: String, _ path: String, _ line: Int) -> EspalierError {
        EspalierError.config("\(file): the key '\(key)' appears twice\(path.isEmpty ? "" : " in '\(path)'") (again on line \(line)); keep one")
    }

    /// The first key given twice in one mapping (key, the mapping's path, line), or nil. For
    /// alias-free documents (JSON).
    static func duplicateKey(_ node: Yams.Node, at path: String = "") -> (String, String, Int)? {
        switch node {
        case .scalar: return nil
        case .sequence(let items):
            for (i, item) in items.enumerated() { if let d = duplicateKey(item, at: "\(path)[\(i)]") { return d } }
            return nil
        case .mapping(let pairs):
            var seen = Set<String>()
            for (k, v) in pairs {
                let key = k.string ?? "\(k)"
                guard seen.insert(key).inserted else { return (key, path, k.mark?.line ?? 0) }
                if let d = duplicateKey(v, at: path.isEmpty ? key : "\(path).\(key)") { return d }
            }
            return nil
        }
    }

    /// YAML text → Foundation values, expanding aliases against a budget of `maxValues` values
    /// (Yams composes aliases as shared nodes, so only the expansion below can blow up).
    public static func yaml(_ text: String, file: String) throws -> Any? {
        try checkDepth(text, file: file)
        let root: Yams.Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw EspalierError.config("\(file) is not valid YAML: \(error)")
        }
        guard let root else { return nil }
        var left = maxValues
        func convert(_ node: Yams.Node, at path: String) throws -> Any {
            left -= 1
            guard left >= 0 else {
                throw EspalierError.config("\(file) expands to more than \(maxValues) values through YAML aliases (nested aliases, a \"billion laughs\"?); "
                                           + "a config needs a few dozen: write the values out")
            }
            switch node {
            case .scalar:
                return Constructor.default.any(from: node)
            case .sequence(let items):
                return try items.enumerated().map { try convert($0.element, at: "\(path)[\($0.offset)]") }
            case .mapping(let pairs):
                var out: [String: Any] = [:]
                for (k, v) in pairs {
                    guard case .scalar(let s) = k else {
                        throw EspalierError.config("\(file): a key\(path.isEmpty ? "" : " in '\(path)'") is not plain text (line \(k.mark?.line ?? 0))")
                    }
                    let key = s.string
                    guard out[key] == nil else { throw duplicate(file, key, path, k.mark?.line ?? 0) }
                    out[key] = try convert(v, at: path.isEmpty ? key : "\(path).\(key)")
                }
                return out
            }
        }
        return try convert(root, at: "")
    }
}
