// The flags that select a search's components — a method by name, a config file, strategy, gates,
// ops, regularizers, merged ops and settings — shared by `search`, `memory` and `plugins check`,
// and their resolution: the method's defaults, then the file, then the flags.

import ArgumentParser
import EspalierHost

struct SelectionFlags: ParsableArguments {
    @Option(help: "A JSON or YAML config (method, strategy, gate, ops, add_ops, regularizers, set, recompute); flags override it.") var config: String?
    @Option(help: "A search method by name (e.g. gdas, betadarts; `espalier plugins` lists them): its strategy, gates, ops, regularizers and settings; any other flag overrides one of them.") var method: String?
    @Option(help: "Strategy id, or its short name where unique (e.g. gdas).") var strategy: String?
    @Option(help: "Gate id, or its short name where unique.") var gate: String?
    @Option(help: "Gate for per-channel masks (role 'channel'), e.g. espalier.gate.figs/1 for the FiGS ops.") var channelGate: String?
    @Option(name: .customLong("op"), help: "Candidate op id (repeatable): these REPLACE the default ops (the 8 DARTS ops, or the method's).") var ops: [String] = []
    @Option(name: .customLong("add-op"), help: "Candidate op id added to the others (repeatable): to the 8 DARTS ops, the method's or --op's.") var addOps: [String] = []
    @Option(name: .customLong("regularizer"), help: "Regularizer id (repeatable), e.g. espalier.regularizer.beta-decay/1 or beta-decay.") var regularizers: [String] = []
    @Option(name: .customLong("merged-op"), help: "An op standing for several candidates on every edge (MergeNAS), e.g. espalier.op.mergenas_conv/1.") var mergedOps: [String] = []
    @Option(name: .customLong("set"), help: "KEY=VALUE: strategy.order=second, gate.tau=2, NAME.PARAM=V, ID.PARAM=V (two components with one short name), NAME#2.PARAM=V (a component selected twice), SLOT=METHOD (repeatable).") var sets: [String] = []

    /// Which of these flags were given, by name.
    var given: [(String, Bool)] {
        [("--config", config != nil), ("--method", method != nil), ("--strategy", strategy != nil), ("--gate", gate != nil),
         ("--channel-gate", channelGate != nil), ("--op", !ops.isEmpty), ("--add-op", !addOps.isEmpty), ("--regularizer", !regularizers.isEmpty),
         ("--merged-op", !mergedOps.isEmpty), ("--set", !sets.isEmpty)]
    }

    /// The config file's `recompute`, or nil (no file, or none in it).
    func fileRecompute() throws -> String? { try config.map { try SelectionRequest.load(file: $0) }?.recompute }

    /// The method's defaults under the file under the flags, checked against `registry`.
    /// `defaults` (a search's DARTS strategy, gate and ops) stand where nothing names them.
    func resolve(_ registry: PluginRegistry, defaults: (strategy: String, gate: String, ops: [String])? = nil,
                 channelGate fallback: String? = nil) throws -> (MethodResolution, Selection) {
        var request = try config.map { try SelectionRequest.load(file: $0) } ?? SelectionRequest()
        request = request.overridden(by: SelectionRequest(strategy: strategy, gate: gate, ops: ops.isEmpty ? nil : ops,
                                                          regularizers: regularizers.isEmpty ? nil : regularizers,
                                                          set: try SelectionRequest.settings(fromFlags: sets),
                                                          method: method, addOps: addOps.isEmpty ? nil : addOps))
        // Merged ops are selected like ops (so `--set NAME.covers=…` reaches them), then kept apart.
        var resolution = try registry.applyMethod(request, channelGate: channelGate ?? fallback, mergedOps: mergedOps, defaultOps: defaults?.ops)
        if resolution.request.strategy == nil { resolution.request.strategy = defaults?.strategy }
        if resolution.request.gate == nil { resolution.request.gate = defaults?.gate }
        return (resolution, try Selection.resolve(resolution.request, registry: registry, defaultSettings: resolution.defaultSettings))
    }
}
