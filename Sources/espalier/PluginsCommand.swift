// `espalier plugins`: list what the plugin folders hold (and what failed to load), describe a
// component, and check a selection of components with its settings before a run.

import ArgumentParser
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

/// Where to look for plugins, and how much of their logging to show, shared by every command that loads them.
struct PluginDirOptions: ParsableArguments {
    @Option(name: .customLong("plugin-dir"), help: "A folder with plugin libraries (repeatable); also ESPALIER_PLUGIN_PATH.")
    var pluginDirs: [String] = []
    @Flag(help: "Also print the plugins' debug lines ([plugin debug]).") var verbose = false

    mutating func validate() throws { HostContext.verbose = verbose }

    /// The registry of the standard search path and these folders; its warnings (skipped folders
    /// and files, shadowed dynamic methods) go to standard error unless `quiet`.
    func loadRegistry(context: HostContext = HostContext(), quiet: Bool = false) -> PluginRegistry {
        let registry = PluginLoader(context: context).load(PluginSearchPath.standard(extraDirectories: pluginDirs))
        if !quiet { reportWarnings(registry) }
        return registry
    }
}

/// Writes a registry's warnings to standard error, one line each.
func reportWarnings(_ registry: PluginRegistry) {
    for w in registry.warnings { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
}

struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List the plugin components found, and the libraries that failed to load.",
        subcommands: [List.self, Describe.self, Check.self],
        defaultSubcommand: List.self)

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List every component (the default).")
        @OptionGroup var dirs: PluginDirOptions
        @Flag(help: "Print JSON.") var json = false
        @Flag(help: "Exit with status 1 when a library was refused.") var strict = false

        func run() throws {
            let registry = dirs.loadRegistry(quiet: json)
            if json {
                let out: [String: Any] = [
                    "components": registry.components.map { describeJSON($0, full: false) },
                    "methods": registry.searchMethods.map(methodJSON),
                    "failures": registry.failures.map { ["library": $0.path, "reason": $0.reason] },
                    "warnings": registry.warnings,
                    "searched": PluginSearchPath.standard(extraDirectories: dirs.pluginDirs).directories,
                ]
                printJSON(out)
                if strict && !registry.failures.isEmpty { throw ExitCode(1) }
                return
            }
            if registry.components.isEmpty { print("no plugin components found") }
            let rows = registry.components.sorted { ($0.kind.rawValue, $0.id) < ($1.kind.rawValue, $1.id) }
            if !rows.isEmpty {
                print(pad("kind", 12) + pad("id", 40) + pad("library", 42) + "summary")
                for c in rows {
                    print(pad(c.kind.rawValue, 12) + pad(c.id, 40) + pad("\(c.library.fileName) \(c.library.version)", 42) + c.summary)
                }
            }
            let methods = registry.searchMethods.sorted { $0.name < $1.name }
            if !methods.isEmpty {
                print("\nMETHODS (espalier search --method NAME; any flag overrides what it brings)")
                let width = (methods.map(\.brings.count).max() ?? 0) + 2
                print(pad("name", 16) + pad("brings", width) + "summary")
                for m in methods { print(pad(m.name, 16) + pad(m.brings, width) + m.summary) }
            }
            if !registry.failures.isEmpty {
                print("\nfailed to load (\(registry.failures.count)):")
                for f in registry.failures { print("  \(f.path): \(f.reason)") }
                // The last line says it, so that a refused library is never missed at the end of a long list.
                print("\(registry.failures.count) librar\(registry.failures.count == 1 ? "y was" : "ies were") refused (above)"
                      + (strict ? "" : "; --strict makes this an error"))
                if strict { throw ExitCode(1) }
            }
        }
    }

    struct Describe: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "describe", abstract: "Show a component's parameters and dynamic methods.")
        @Argument(help: "Component id, e.g. espalier.gate.softmax/1.") var id: String
        @OptionGroup var dirs: PluginDirOptions
        @Flag(help: "Print JSON.") var json = false
        @Flag(help: "An op: print its IR, the graph of host primitives its build makes (nodes, shapes, FLOPs, kept bytes).") var graph = false
        @Option(help: "With --graph: the input shape N,C,H,W.") var inputShape = "2,16,32,32"
        @Option(help: "With --graph: the op's stride.") var stride = 1
        @Option(help: "With --graph: the op's output channels (default: its input's).") var outChannels: Int?
        @Option(name: .customLong("set"), help: "With --graph: NAME=VALUE, one of the op's parameters (repeatable).") var sets: [String] = []
        @Flag(help: "With --graph: Graphviz DOT instead of text (render with `dot -Tsvg`).") var dot = false
        @Flag(help: "With --graph: the evaluation build (batch norm with running statistics).") var evaluation = false

        func run() throws {
            let context = HostContext(accountant: MemoryAccountant(mode: .dryRun), seed: 0)
            let registry = dirs.loadRegistry(context: context)
            let c: Component
            do { c = try registry.require(id) } catch { throw ValidationError("\(error)") }
            if graph { return try printGraph(c, context: context) }
            if json { printJSON(describeJSON(c, full: true)); return }
            print("\(c.id)  (\(c.kind.rawValue), \(c.form))")
            print("  \(c.summary)")
            print("  library: \(c.library.path)  \(c.library.name) \(c.library.version), ABI \(c.library.abi.major).\(c.library.abi.minor)")
            if let m = c.method { print("  brings the method '\(m.name)' (--method \(m.name)): \(m.brings)") }
            if c.params.isEmpty { print("  parameters: none") } else {
                print("  parameters (--set \(shortKey(c)).NAME=VALUE):")
                for p in c.params {
                    var t = p.type.rawValue
                    if let ch = p.choices { t += " {\(ch.joined(separator: "|"))}" }
                    if let lo = p.min, let hi = p.max { t += hi > 1e15 ? " [\(fmt(lo)), ∞)" : " [\(fmt(lo)), \(fmt(hi))]" }
                    print("    " + pad(p.name, 20) + pad(t, 28) + pad("default \(p.defaultValue)", 18) + p.doc)
                    if let o = spaceOption(c, p) { print("    " + pad("", 66) + "space option: \(o.doc) (sets \(o.sets))") }
                }
            }
            if !c.methods.isEmpty {
                print("  dynamic methods (--set SLOT=NAME):")
                for m in c.methods { print("    " + pad(m.selector, 32) + pad(m.signature.description, 24) + m.doc) }
            }
        }

        /// `--graph`: the op built on a shape-only input of --input-shape, traced into its IR.
        func printGraph(_ c: Component, context: HostContext) throws {
            guard c.kind == .op else { throw ValidationError("--graph shows an op's IR; \(c.id) is a \(c.kind.rawValue)") }
            let dims = inputShape.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            let shape = dims.compactMap { $0 }
            guard dims.count == 4, shape.count == 4, shape.allSatisfy({ $0 > 0 && $0 <= 1 << 20 }) else {
                throw ValidationError("--input-shape '\(inputShape)' is not N,C,H,W of positive sizes, e.g. 2,16,32,32")
            }
            guard stride >= 1, stride <= 64 else { throw ValidationError("--stride must be between 1 and 64 (got \(stride))") }
            var settings: [String: String] = [:]
            for s in sets {
                let kv = s.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2, !kv[0].isEmpty else { throw ValidationError("--set '\(s)' is not NAME=VALUE, e.g. beta_init=0.5") }
                settings[kv[0]] = kv[1]
            }
            let op: PluginOp
            do {
                op = try PluginOp(c, context: context, config: OpConfig(inChannels: shape[1], outChannels: outChannels ?? shape[1], stride: stride),
                                  settings: settings, ownerPath: c.shortName)
            } catch { throw ValidationError("\(c.id) cannot be made with \(shape[1]) channels and stride \(stride): \(error)") }
            let ir: OpIR
            do { ir = try op.ir(inputShape: shape, training: !evaluation) } catch {
                throw ValidationError("\(c.id) cannot be built on an input of \(inputShape): \(error)")
            }
            guard !dot else { print(ir.dot, terminator: ""); return }
            var lines = [ir.text]
            if ir.isRaw { lines.append("  (a raw op: its own kernels, opaque to the host; export and fusion refuse it)") }
            for (m, line) in zip(ir.channelMasks, ir.channelMaskLines) {
                lines.append("  " + line + (op.maskWidths[m.logits] == nil ? "; its width was never asked (channel_width): no FLOPs or memory targets, no export" : ""))
            }
            print(lines.joined(separator: "\n"))
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Resolve a selection of components and settings (a method's defaults, the config file, then flags) and print it, or say what is wrong.")
        @OptionGroup var dirs: PluginDirOptions
        @OptionGroup var flags: SelectionFlags

        func run() throws {
            let registry = dirs.loadRegistry()
            let selection: Selection, resolution: MethodResolution
            do { (resolution, selection) = try flags.resolve(registry) } catch { throw ValidationError("\(error)") }
            if let m = resolution.method { print(pad("--method", 12) + pad(m.name, 40) + m.summary) }
            if let g = resolution.channelGate { print(pad("channel", 12) + g) }
            let merged = Set(resolution.mergedOps)
            for choice in selection.all {
                let kind = merged.contains(choice.component.id) ? "merged-op" : choice.component.kind.rawValue
                let settings = choice.component.params.map { p in "\(p.name)=\(choice.settings[p.name] ?? p.defaultValue)" }
                print(pad(kind, 12) + pad(choice.component.id, 40) + settings.joined(separator: " "))
            }
            for (slot, m) in selection.methods.sorted(by: { $0.key < $1.key }) { print(pad("method", 12) + pad(slot, 40) + m.name + " " + m.signature.description) }
            if selection.all.isEmpty && selection.methods.isEmpty { print("nothing selected") }
        }
    }
}

private func shortKey(_ c: Component) -> String {
    switch c.kind {
    case .strategy: return "strategy"
    case .gate: return "gate"
    default: return c.shortName
    }
}

/// The space option a strategy's parameter is (the host applies it to the space), or nil.
private func spaceOption(_ c: Component, _ p: ParamSpec) -> SpaceOption? { c.kind == .strategy ? SpaceOption.named(p.name) : nil }

private func fmt(_ d: Double) -> String { d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d) }

private func describeJSON(_ c: Component, full: Bool) -> [String: Any] {
    var d: [String: Any] = ["kind": c.kind.rawValue, "id": c.id, "revision": c.revision, "summary": c.summary, "form": c.form,
                            "library": c.library.path, "library_name": c.library.name, "library_version": c.library.version,
                            "abi": "\(c.library.abi.major).\(c.library.abi.minor)"]
    if full {
        d["parameters"] = c.params.map { p -> [String: Any] in
            var x: [String: Any] = ["name": p.name, "type": p.type.rawValue, "default": p.defaultValue, "doc": p.doc]
            if let ch = p.choices { x["choices"] = ch }
            if let lo = p.min { x["min"] = lo }
            if let hi = p.max { x["max"] = hi }
            if let o = spaceOption(c, p) { x["space_option"] = ["doc": o.doc, "sets": o.sets, "accepts": o.accepts] }
            return x
        }
        if let m = c.method { d["method"] = methodJSON(m) }
        d["dynamic_methods"] = c.methods.map { ["slot": $0.slot, "name": $0.name, "signature": $0.signature.description, "doc": $0.doc] }
    }
    return d
}

private func methodJSON(_ m: SearchMethod) -> [String: Any] {
    var d: [String: Any] = ["name": m.name, "summary": m.summary, "component": m.describedBy, "strategy": m.strategy,
                            "regularizers": m.regularizers, "ops": m.ops, "merged_ops": m.mergedOps, "settings": m.settings]
    if let g = m.gate { d["gate"] = g }
    if let g = m.channelGate { d["channel_gate"] = g }
    return d
}

func printJSON(_ object: Any) {
    if let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) {
        print(String(decoding: data, as: UTF8.self))
    }
}
