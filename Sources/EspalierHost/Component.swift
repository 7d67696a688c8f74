// A component as the host sees it: its kind, id, parameters and dynamic methods, checked when
// the library loads, and a copy of its kind's vtable. Instances are made by the adapters
// (PluginOp, PluginGate, PluginRegularizer, PluginStrategy).

import CEspalierSDK
import Foundation

public enum ComponentKind: String, Codable, Sendable, CaseIterable {
    case op, gate, regularizer, strategy

    init?(raw: es_kind) {
        switch raw {
        case ES_KIND_OP: self = .op
        case ES_KIND_GATE: self = .gate
        case ES_KIND_REGULARIZER: self = .regularizer
        case ES_KIND_STRATEGY: self = .strategy
        default: return nil
        }
    }
}

/// A parameter as described by its component.
public struct ParamSpec: Codable, Sendable, Equatable {
    public enum ValueType: String, Codable, Sendable { case bool, int, double, string, choice }
    public let name: String
    public let type: ValueType
    public let defaultValue: String
    public let doc: String
    public let choices: [String]?
    public let min: Double?
    public let max: Double?

    /// Checks `text` against the type, bounds and choices; returns the C value or a message.
    public func parse(_ text: String) throws -> (int: Int64, double: Double) {
        func fail(_ why: String) -> PluginLoadError { PluginLoadError("parameter '\(name)' (\(type.rawValue)): \(why)") }
        switch type {
        case .bool:
            switch text.lowercased() {
            case "true", "1", "yes", "on": return (1, 1)
            case "false", "0", "no", "off": return (0, 0)
            default: throw fail("'\(text)' is not true or false")
            }
        case .int:
            guard let v = Int64(text.trimmingCharacters(in: .whitespaces)) else { throw fail("'\(text)' is not an integer") }
            try checkBounds(Double(v), fail)
            return (v, Double(v))
        case .double:
            guard let v = Double(text.trimmingCharacters(in: .whitespaces)), v.isFinite else { throw fail("'\(text)' is not a finite number") }
            try checkBounds(v, fail)
            return (Int64(exactly: v.rounded()) ?? 0, v)
        case .string:
            return (0, 0)
        case .choice:
            guard let choices, choices.contains(text) else { throw fail("'\(text)' is not one of \((choices ?? []).joined(separator: ", "))") }
            return (Int64(choices.firstIndex(of: text)!), 0)
        }
    }

    private func checkBounds(_ v: Double, _ fail: (String) -> PluginLoadError) throws {
        if let min, v < min { throw fail("\(v) is below the minimum \(min)") }
        if let max, v > max { throw fail("\(v) is above the maximum \(max)") }
    }
}

public final class Component {
    public let kind: ComponentKind
    public let id: String
    public let summary: String
    public let params: [ParamSpec]
    public let methods: [DynamicMethod]
    public unowned let library: LoadedLibrary
    /// The descriptor in the library (static storage), handed back to `create`.
    let descriptor: UnsafePointer<es_component_desc>
    let opTable: es_op_vtable?
    let gateTable: es_gate_vtable?
    let regularizerTable: es_regularizer_vtable?
    let strategyTable: es_strategy_vtable?
    /// The search method this component brings (ABI 1.5 `es_component_desc.method`), or nil.
    public let method: SearchMethod?

    /// `vendor.kind.name/revision`: lower-case words, dots, a slash and a number.
    static func isValidID(_ id: String) -> Bool {
        let parts = id.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let rev = Int(parts[1]), rev >= 1 else { return false }
        let words = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        guard words.count >= 2 else { return false }
        return words.allSatisfy { w in !w.isEmpty && w.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" } }
    }

    public var revision: Int { Int(id.split(separator: "/").last ?? "0") ?? 0 }

    /// The last word of an id without its revision (`sep_conv_3x3` for `espalier.op.sep_conv_3x3/1`):
    /// the name in genotypes and the prefix of a component's `--set` keys.
    public static func shortName(_ id: String) -> String {
        let base = id.split(separator: "/").first.map(String.init) ?? id
        return String(base.split(separator: ".").last ?? Substring(base))
    }
    public var shortName: String { Component.shortName(id) }
    /// A strategy's ES_REQUIRES_* bits (0 for other kinds).
    public var strategyRequirements: UInt32 { strategyTable?.requires ?? 0 }
    /// An op that applies an edge's mixing weights itself (`build_mixed`, MergeNAS).
    public var hasMixed: Bool { opTable?.build_mixed != nil }

    init(describing p: UnsafePointer<es_component_desc>, library: LoadedLibrary, index: Int) throws {
        // `method` (ABI 1.5) exists only in descriptions of plugins built for 1.5 or later; an older
        // plugin's description ends before it (readSized zero-fills what it did not declare).
        let d: es_component_desc = try readSized(UnsafeRawPointer(p), minimumSize: MemoryLayout<es_component_desc>.offset(of: \.method)!,
                                                 what: "component #\(index)")
        let where_ = "component #\(index)"
        guard let kind = ComponentKind(raw: d.kind) else {
            throw PluginLoadError("malformed description: \(where_) has unknown kind \(d.kind) (1 op, 2 gate, 3 regularizer, 4 strategy)")
        }
        let id = try requiredString(d.id, "\(where_)'s id")
        guard Component.isValidID(id) else {
            throw PluginLoadError("malformed description: id '\(id)' is not of the form vendor.kind.name/revision (e.g. org.example.gate.foo/1)")
        }
        self.kind = kind
        self.id = id
        self.summary = optionalString(d.summary) ?? ""
        self.library = library
        self.descriptor = p

        // Parameters.
        guard d.param_count <= 256, d.param_count == 0 || d.params != nil else {
            throw PluginLoadError("malformed description: \(id) declares \(d.param_count) parameters but params is NULL or too many")
        }
        var params: [ParamSpec] = []
        for i in 0..<Int(d.param_count) {
            let pd: es_param_desc = try readSized(UnsafeRawPointer(d.params! + i), what: "\(id) parameter #\(i)")
            let name = try requiredString(pd.name, "\(id) parameter #\(i) name")
            // ASCII only: Character.isLowercase / isNumber also accept 'λ', 'é' or '²'.
            guard name.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || "_.-".unicodeScalars.contains($0) }) else {
                throw PluginLoadError("malformed description: \(id) parameter name '\(name)' must use only a-z, 0-9, '_', '.', '-' (ASCII)")
            }
            guard !params.contains(where: { $0.name == name }) else { throw PluginLoadError("malformed description: \(id) declares parameter '\(name)' twice") }
            let type: ParamSpec.ValueType
            switch pd.type {
            case ES_PARAM_BOOL: type = .bool
            case ES_PARAM_INT: type = .int
            case ES_PARAM_DOUBLE: type = .double
            case ES_PARAM_STRING: type = .string
            case ES_PARAM_CHOICE: type = .choice
            default: throw PluginLoadError("malformed description: \(id) parameter '\(name)' has unknown type \(pd.type)")
            }
            guard let def = pd.default_value.map({ String(cString: $0) }) else {
                throw PluginLoadError("malformed description: \(id) parameter '\(name)' has no default (default_value is NULL)")
            }
            let choices = type == .choice ? optionalString(pd.choices)?.split(separator: "|").map(String.init) : nil
            if type == .choice && (choices ?? []).isEmpty {
                throw PluginLoadError("malformed description: \(id) parameter '\(name)' is a choice without choices")
            }
            let bounded = pd.min_value <= pd.max_value && (type == .int || type == .double)
            let spec = ParamSpec(name: name, type: type, defaultValue: def, doc: optionalString(pd.doc) ?? "", choices: choices,
                                 min: bounded ? pd.min_value : nil, max: bounded ? pd.max_value : nil)
            do { _ = try spec.parse(def) } catch {
                throw PluginLoadError("malformed description: \(id) default of \(error)")
            }
            params.append(spec)
        }
        self.params = params

        // Dynamic methods.
        guard d.method_count <= 256, d.method_count == 0 || d.methods != nil else {
            throw PluginLoadError("malformed description: \(id) declares \(d.method_count) dynamic methods but methods is NULL or too many")
        }
        var methods: [DynamicMethod] = []
        for i in 0..<Int(d.method_count) {
            let md: es_dynamic_method_desc = try readSized(UnsafeRawPointer(d.methods! + i), what: "\(id) dynamic method #\(i)")
            let slot = try requiredString(md.slot, "\(id) dynamic method #\(i) slot")
            let name = try requiredString(md.name, "\(id) dynamic method #\(i) name")
            let sigText = try requiredString(md.signature, "\(id) dynamic method \(slot)=\(name) signature")
            guard let fn = md.function else { throw PluginLoadError("malformed description: \(id) dynamic method \(slot)=\(name) has no function") }
            let signature: FFISignature
            do { signature = try FFISignature(parsing: sigText) } catch {
                throw PluginLoadError("malformed dynamic method \(slot)=\(name) of \(id): \(error)")
            }
            methods.append(try DynamicMethod(slot: slot, name: name, doc: optionalString(md.doc) ?? "", signature: signature,
                                             function: unsafeBitCast(fn, to: UnsafeRawPointer.self)))
        }
        self.methods = methods

        // The kind's vtable: present, large enough, with its required functions.
        guard let vt = d.vtable else { throw PluginLoadError("malformed description: \(id) has no vtable") }
        func missing(_ what: String) -> PluginLoadError { PluginLoadError("malformed description: \(id)'s \(kind.rawValue) table has no \(what)") }
        var op: es_op_vtable? = nil, gate: es_gate_vtable? = nil, reg: es_regularizer_vtable? = nil, strat: es_strategy_vtable? = nil
        // save_state / load_state (ABI 1.3) exist only in tables of plugins built for 1.3 or later;
        // an older plugin's table ends before them (readSized zero-fills what it did not declare).
        let stateFields = library.abi.minor >= 3
        switch kind {
        case .op:
            // flags (ABI 1.7) ends the table: older plugins' tables stop before it and read as 0.
            var t: es_op_vtable = try readSized(vt, minimumSize: MemoryLayout<es_op_vtable>.offset(of: \.flags)!, what: "\(id)'s op table")
            if library.abi.minor < 7 { t.flags = 0 }
            guard t.create != nil, t.destroy != nil else { throw missing("create/destroy") }
            let raw = [t.output_shape != nil, t.forward != nil, t.backward != nil]
            guard t.build != nil || raw.allSatisfy({ $0 }) else { throw missing("build (composed) nor output_shape+forward+backward (raw)") }
            guard t.build == nil || !raw.contains(true) else {
                throw PluginLoadError("malformed description: \(id) is both composed (build) and raw (forward/backward); choose one")
            }
            op = t
        case .gate:
            let t: es_gate_vtable = try readSized(vt, what: "\(id)'s gate table")
            guard t.create != nil, t.destroy != nil, t.forward != nil, t.backward != nil else { throw missing("create/destroy/forward/backward") }
            guard t.granularities & 0b1110 != 0 else { throw PluginLoadError("malformed description: \(id) supports no granularity") }
            gate = t
        case .regularizer:
            var t: es_regularizer_vtable = try readSized(vt, minimumSize: MemoryLayout<es_regularizer_vtable>.offset(of: \.save_state)!,
                                                         what: "\(id)'s regularizer table")
            guard t.create != nil, t.destroy != nil else { throw missing("create/destroy") }
            guard t.loss != nil || t.proximal != nil else { throw missing("loss nor proximal") }
            if !stateFields { t.save_state = nil; t.load_state = nil }
            guard (t.save_state == nil) == (t.load_state == nil) else { throw missing("load_state to go with save_state (set both or neither)") }
            reg = t
        case .strategy:
            var t: es_strategy_vtable = try readSized(vt, minimumSize: MemoryLayout<es_strategy_vtable>.offset(of: \.save_state)!,
                                                      what: "\(id)'s strategy table")
            guard t.create != nil, t.destroy != nil, t.plan_step != nil else { throw missing("create/destroy/plan_step") }
            if !stateFields { t.save_state = nil; t.load_state = nil }
            guard (t.save_state == nil) == (t.load_state == nil) else { throw missing("load_state to go with save_state (set both or neither)") }
            strat = t
        }
        opTable = op; gateTable = gate; regularizerTable = reg; strategyTable = strat
        if library.abi.minor >= 5, let m = d.method {
            method = try SearchMethod(describing: m, by: id, kind: kind)
        } else {
            method = nil
        }
    }

    /// An op whose forward may run again in backward (`--recompute`): every composed op (the host
    /// replays its primitives), a raw one only when it declares ES_OP_RECOMPUTABLE (ABI 1.7).
    public var isRecomputableOp: Bool {
        guard let t = opTable else { return false }
        return t.build != nil || t.flags & UInt32(ES_OP_RECOMPUTABLE) != 0
    }

    /// For listings.
    public var form: String {
        switch kind {
        case .op: return opTable?.build != nil ? "composed" : isRecomputableOp ? "raw kernel, recomputable" : "raw kernel"
        case .gate:
            let f = gateTable!.flags
            return [f & UInt32(ES_GATE_SAMPLED) != 0 ? "sampled" : "deterministic", f & UInt32(ES_GATE_HARD) != 0 ? "hard" : nil]
                .compactMap { $0 }.joined(separator: ", ")
        case .regularizer:
            return [regularizerTable!.loss != nil ? "loss" : nil, regularizerTable!.proximal != nil ? "proximal" : nil].compactMap { $0 }.joined(separator: " + ")
        case .strategy:
            let r = strategyTable!.requires
            let needs = [(UInt32(ES_REQUIRES_ARCH_PARAMS), "architecture parameters"), (UInt32(ES_REQUIRES_SAMPLED_GATE), "a sampled gate"),
                         (UInt32(ES_REQUIRES_HARD_GATE), "a hard gate"), (UInt32(ES_REQUIRES_NO_ARCH_PARAMS), "no architecture parameters")]
                .filter { r & $0.0 != 0 }.map(\.1)
            return needs.isEmpty ? "no requirements" : "needs " + needs.joined(separator: ", ")
        }
    }
}
