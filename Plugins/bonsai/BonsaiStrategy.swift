// espalier.strategy.bonsai/1: Bonsai-Net's growth inside a memory budget (Geada et al.), on the
// host's DARTS cell space or the paper's relaxed hyper-connected space, with the saw-wave gate (espalier.gate.sawwave/1) and the compression
// regularizer (espalier.regularizer.compression/1).
//
// The network grows in sections: section_cells lists the cell count after each section. Before
// the first step the strategy writes every pruner w = init through arch_view and checks that the
// first section fits the budget (the host's --memory-budget, or `budget`): the accountant's dry
// run (predict_peak) plus the dataset's bytes; if it does not, the search fails before training,
// naming the shortfall. A section's first warmup_epochs take weight-only steps (the grown
// network's weights are fresh and the pruners hold still, so the measured peak is the predicted
// one); then each step is single-level (weights and pruners on the same batch); after every step
// each w is clamped to ±clamp·init. At each epoch end:
//   • deadheading: a candidate whose pruner stayed below 0 (G = 0: it did not run) at
//     deadhead_window consecutive epoch ends is removed for good (set_op_state REMOVED; its
//     parameters are freed); the candidate with the highest w on an edge is never removed;
//     at each growth the candidates pruned then are masked (they never run again and are
//     deadheaded in turn), so within a section the running candidates only shrink and the peak
//     stays at most the one predicted at the section's start;
//   • the next section's peak is predicted as the network is now — candidates with G = 0 are
//     masked for the prediction, as they do not run — at the next depth. If it fits
//     the budget less margin·(budget − dataset) (after min_section_epochs), the section ends and the host's grow adds
//     the cells; else the compression target for the regularizer is set from a linear model:
//     c* = c − (P_next − that) / (Σ s · cells_next / cells_now), with c and Σ s the
//     host's compression/… and candidate_bytes/… values (the accountant's bytes per candidate),
//     i.e. the share of the candidates' bytes that may keep running so that the section fits.
//     The decision itself is always the dry-run prediction, never the model.
// Run it with --arch-weight-decay 0: decay pulls a pruned w (< 0) back towards 0, where G = 1
// revives it. After the last section is added the compression term is switched off (regularizer.lambda = 0)
// and the remaining epochs train the grown network. Each section is logged as
//   "bonsai section K: cells=N target=C epochs=E predicted=P measured=M budget=B"
// (predicted: the dry run for the section as it started, dataset included; measured: the
// accountant's peak of the section's first epoch).
// The paper's relaxed space: hyper_connected=true (a host space option; or --hyper-connected)
// makes every cell distinct (cell type t IS cell t: its own pruners, its own op states) and each
// cell sum a pruned set of all earlier outputs (ABI 1.2 input_view / set_input_state): the
// strategy then also writes init into, clamps, masks at growth, predicts without, and deadheads
// the inter-cell inputs' pruners exactly like the ops'; new cells added by a growth arrive
// hyper-connected with fresh pruners (w = init); the old classifier becomes an auxiliary head
// (auxiliary_weight, the host's space option: loss = main + w·aux); reductions stay where the last
// section's depth has them (reduction_cells, empty = cells/3 and 2·cells/3 of the last section);
// compression is per cell over its candidates and inter-cell inputs. The host writes the pruned
// network (surviving ops per edge and inputs per cell) as OUT/pruned.json; `espalier
// train-pruned` trains it. On the DARTS space (the default) α is shared by the cells of a type,
// so new cells arrive already pruned as the old ones and there is no auxiliary head.
// Growth keeps the trained weights through the host's `grow_keeps_weights` convention (every
// weight whose name and shape match is copied; cells whose shape changed start fresh).
// Saved state (format 1): the section, its first epoch, the target, the predicted and measured
// peaks, the deadheading counters and whether the start was done; a resumed search goes on as if
// uninterrupted (cells, op states and pruners are the host's).

import EspalierPluginKit

final class BonsaiStrategy: StrategyComponent, StatefulComponent {
    static let id = "espalier.strategy.bonsai/1"

    private let host: PluginHost
    private let sectionCells: [Int]
    private let budgetGiven: UInt64?
    private let margin: Double
    private let initW: Double
    private let clampW: Double
    private let minSectionEpochs: Int
    private let maxSectionEpochs: Int
    private let deadheadWindow: Int
    private let warmupEpochs: Int

    /// The section being trained (index into sectionCells).
    private var section = 0
    private var sectionStart = 0
    private var target = 1.0
    private var predictedAtStart: UInt64 = 0
    private var measuredFirst: UInt64? = nil
    /// Consecutive epoch ends with w < 0, per cell type, (edges·ops).
    private var zeroEpochs: [[Int]] = []
    /// Hyper-connected: consecutive epoch ends with w < 0, per cell, per inter-cell input.
    private var inputZeroEpochs: [[Int]] = []
    private var started = false

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        let text = try params.string("section_cells")
        let items = text.split(separator: ",").map { String($0).filter { $0 != " " } }
        sectionCells = try items.map { s in
            guard let v = Int(s), v >= 1 else {
                throw PluginError.invalidArgument("\(Self.id): section_cells = \"\(text)\": '\(s)' is not a cell count >= 1")
            }
            return v
        }
        guard !sectionCells.isEmpty else {
            throw PluginError.invalidArgument("\(Self.id): section_cells is empty; give the cell count after each section, e.g. \"3,5,8\"")
        }
        for i in 1..<sectionCells.count where sectionCells[i] <= sectionCells[i - 1] {
            throw PluginError.invalidArgument("\(Self.id): section_cells \(sectionCells) must grow from section to section (\(sectionCells[i - 1]) → \(sectionCells[i]))")
        }
        budgetGiven = try Self.parseBytes(try params.string("budget"))
        margin = try params.double("margin")
        guard margin >= 0, margin < 1 else { throw PluginError.invalidArgument("\(Self.id): margin must be in [0, 1) (got \(margin))") }
        initW = try params.double("init")
        guard initW.isFinite, initW > 0 else { throw PluginError.invalidArgument("\(Self.id): init must be a finite number > 0 (got \(initW))") }
        let factor = try params.double("clamp_factor")
        guard factor.isFinite, factor >= 1 else { throw PluginError.invalidArgument("\(Self.id): clamp_factor must be >= 1 (got \(factor))") }
        clampW = factor * initW
        minSectionEpochs = try params.int("min_section_epochs")
        maxSectionEpochs = try params.int("max_section_epochs")
        guard minSectionEpochs >= 1, maxSectionEpochs >= minSectionEpochs else {
            throw PluginError.invalidArgument("\(Self.id): need 1 <= min_section_epochs (\(minSectionEpochs)) <= max_section_epochs (\(maxSectionEpochs))")
        }
        warmupEpochs = try params.int("warmup_epochs")
        guard warmupEpochs >= 0 else { throw PluginError.invalidArgument("\(Self.id): warmup_epochs must be >= 0 (got \(warmupEpochs))") }
        deadheadWindow = try params.int("deadhead_window")
        guard deadheadWindow >= 1 else { throw PluginError.invalidArgument("\(Self.id): deadhead_window must be >= 1 epoch (got \(deadheadWindow))") }
    }

    /// "" = the host's budget; else bytes, with an optional unit (KiB, MiB, GiB, KB, MB, GB).
    static func parseBytes(_ text: String) throws -> UInt64? {
        let t = text.filter { $0 != " " }
        guard !t.isEmpty else { return nil }
        let units: [(String, Double)] = [("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)]
        for (u, f) in units where t.hasSuffix(u) {
            if let v = Double(t.dropLast(u.count)), v > 0, v.isFinite { return UInt64(v * f) }
        }
        if let v = Double(t), v > 0, v.isFinite { return UInt64(v) }
        throw PluginError.invalidArgument("\(id): budget = \"\(text)\" is not a size; give bytes, e.g. 1.5GiB, 800MiB or 123456 (empty = --memory-budget)")
    }

    private func services() throws -> SearchServices {
        guard let s = host.search else { throw PluginError.unsupported("\(Self.id) acts through the search services; it runs only inside a search") }
        return s
    }

    private func budget() throws -> UInt64 {
        if let budgetGiven { return budgetGiven }
        let b = try host.memoryReport().budget
        guard b > 0 else {
            throw PluginError.invalidArgument("\(Self.id) grows the network inside a memory budget: give --memory-budget or strategy.budget")
        }
        return b
    }

    /// The predicted peak (dataset included) of the network as it is now at `cells` cells:
    /// candidates whose pruner is below 0 do not run, so they are masked for the prediction.
    func predict(_ search: SearchServices, cells: Int?) throws -> UInt64 {
        let info = try search.spaceInfo()
        var masked: [(Int, Int, Int)] = []
        for t in 0..<info.cellTypes {
            guard let a = try search.archView(cellType: t).logits.data else { continue }
            for e in 0..<info.edges {
                for o in 0..<info.ops where a[e * info.ops + o] < 0 {
                    if try search.opState(cellType: t, edge: e, op: o) == .active { masked.append((t, e, o)) }
                }
            }
        }
        let maskedInputs = try prunedInputs(search, info)
        for (t, e, o) in masked { try search.setOpState(cellType: t, edge: e, op: o, .masked) }
        for (c, j) in maskedInputs { try search.setInputState(cell: c, input: j, .masked) }
        defer {
            for (t, e, o) in masked { try? search.setOpState(cellType: t, edge: e, op: o, .active) }
            for (c, j) in maskedInputs { try? search.setInputState(cell: c, input: j, .active) }
        }
        let change = cells.map { "{\"cells\":\($0)}" } ?? "{}"
        let data = (try? search.value("memory.dataset_bytes")).map { UInt64($0) } ?? 0
        return try search.predictPeak(change: change).peakTotal + data
    }

    /// Masks every candidate whose pruner is below 0 (it does not run now): from a section's
    /// start the running candidates can only shrink, so the section's peak never exceeds the one
    /// predicted at its start (a masked candidate never runs; deadheading later frees it).
    private func maskPruned(_ search: SearchServices) throws {
        let info = try search.spaceInfo()
        for t in 0..<info.cellTypes {
            guard let a = try search.archView(cellType: t).logits.data else { continue }
            for e in 0..<info.edges {
                for o in 0..<info.ops where a[e * info.ops + o] < 0 {
                    if try search.opState(cellType: t, edge: e, op: o) == .active { try search.setOpState(cellType: t, edge: e, op: o, .masked) }
                }
            }
        }
        for (c, j) in try prunedInputs(search, info) { try search.setInputState(cell: c, input: j, .masked) }
    }

    /// Hyper-connected: the active inter-cell inputs whose pruner is below 0 (they do not run).
    private func prunedInputs(_ search: SearchServices, _ info: SearchServices.SpaceInfo) throws -> [(Int, Int)] {
        guard info.hyperConnected else { return [] }
        var out: [(Int, Int)] = []
        for c in 0..<info.cells {
            let v = try search.inputView(cell: c).logits
            guard let a = v.data else { continue }
            for j in 0..<v.count where a[j] < 0 {
                if try search.inputState(cell: c, input: j) == .active { out.append((c, j)) }
            }
        }
        return out
    }

    /// Every pruner logits tensor: each cell type's (edges, ops) and, hyper-connected, each cell's inputs (inputs, 1).
    private func prunerViews(_ search: SearchServices, _ info: SearchServices.SpaceInfo) throws -> [TensorView] {
        try (0..<info.cellTypes).map { try search.archView(cellType: $0).logits }
            + (info.hyperConnected ? try (0..<info.cells).map { try search.inputView(cell: $0).logits } : [])
    }

    /// Writes w = init into cell types (and their cells' inputs) from `firstType` on: all at the
    /// start, the new cells' after a hyper-connected growth (their α is fresh).
    private func initPruners(_ search: SearchServices, from firstType: Int) throws {
        let info = try search.spaceInfo()
        var views = try (firstType..<info.cellTypes).map { try search.archView(cellType: $0).logits }
        if info.hyperConnected { views += try (firstType..<info.cells).map { try search.inputView(cell: $0).logits } }
        for v in views { if let a = v.data { for i in 0..<v.count where a[i].isFinite { a[i] = Float(initW) } } }
    }

    // MARK: Hooks

    /// Weights only in a section's first warmup_epochs (the grown network's weights are fresh, and
    /// the pruners hold still, so the section's peak is the one predicted), then single-level.
    func planStep(state: RunState) throws -> StepPlan {
        state.epoch - sectionStart < warmupEpochs ? StepPlan(.weightsOnly) : StepPlan(.singleLevel)
    }

    /// w ∈ [−clamp, clamp] after every step.
    func afterStep(state: RunState) throws {
        guard let search = host.search else { return }
        let c = Float(clampW)
        for v in try prunerViews(search, try search.spaceInfo()) {
            guard let a = v.data else { continue }
            for i in 0..<v.count where a[i].isFinite { a[i] = min(max(a[i], -c), c) }
        }
    }

    func epochBegin(state: RunState) throws {
        guard !started else { return }
        started = true
        let search = try services()
        let b = try budget()
        let info = try search.spaceInfo()
        if info.hyperConnected && !search.hasInputServices {
            throw PluginError.unsupported("\(Self.id): the hyper-connected space needs the host's inter-cell input services (ABI 1.2)")
        }
        // Every pruner starts at init (kept).
        try initPruners(search, from: 0)
        let first = sectionCells[0]
        let need = try predict(search, cells: first)
        guard need <= b else {
            throw PluginError(ES_ERROR_BUDGET, "\(Self.id): section 1 (\(first) cells) needs \(Self.format(need)) (dry-run prediction, dataset included) "
                              + "but the budget is \(Self.format(b)): short by \(Self.format(need - b)); use fewer cells in section_cells, a smaller batch or partial channels")
        }
        if info.cells != first {
            try search.grow(cells: first)
            try initPruners(search, from: 0)
        }
        predictedAtStart = try predict(search, cells: nil)
        try setTarget(search, 1)
        host.log("\(Self.id): \(sectionCells.count) section(s) \(sectionCells), budget \(Self.format(b)); section 1 predicted \(Self.format(predictedAtStart))")
    }

    private func setTarget(_ search: SearchServices, _ c: Double) throws {
        target = c
        do { try search.setValue("regularizer.target", c) } catch {
            throw PluginError.invalidArgument("\(Self.id) sets the compression target of espalier.regularizer.compression/1; add --regularizer espalier.regularizer.compression/1 (\(error))")
        }
    }

    func epochEnd(state: RunState, metrics: EpochMetrics) throws -> Bool {
        let search = try services()
        if measuredFirst == nil { measuredFirst = metrics.peakBytes }
        try deadhead(search)
        let spent = state.epoch + 1 - sectionStart
        let lastEpoch = state.epoch + 1 >= state.totalEpochs
        guard section + 1 < sectionCells.count else {
            if lastEpoch { logSection(epochs: spent) }
            return false
        }
        // The margin is a share of what a step may use (the budget less the dataset's bytes).
        let data = (try? search.value("memory.dataset_bytes")) ?? 0
        let full = Double(try budget())
        let b = full - margin * max(full - data, 0)
        let next = sectionCells[section + 1]
        let need = Double(try predict(search, cells: next))
        if need <= b && spent >= minSectionEpochs {
            logSection(epochs: spent)
            try maskPruned(search)
            let before = try search.spaceInfo()
            try search.grow(cells: next)
            // Hyper-connected: the new cells are distinct, with fresh α: their pruners start at init.
            if before.hyperConnected { try initPruners(search, from: before.cellTypes) }
            section += 1
            sectionStart = state.epoch + 1
            measuredFirst = nil
            predictedAtStart = try predict(search, cells: nil)
            if section + 1 == sectionCells.count {
                // The last section trains without the compression term.
                try search.setValue("regularizer.lambda", 0)
                host.log("\(Self.id): last section (\(next) cells) predicted \(Self.format(predictedAtStart)); training on without the compression term")
            }
            return false
        }
        // Not yet: the compression that would make the next section fit.
        let now = try search.spaceInfo().cells
        let info = try search.spaceInfo()
        let types = info.hyperConnected ? (0..<info.cellTypes).map { "cell\($0)" } : ["normal", "reduce"]
        let bytes = types.compactMap { try? search.value("candidate_bytes/\($0)") }.reduce(0, +)
        let running = types.compactMap { t in (try? search.value("candidate_bytes/\(t)")).flatMap { s in (try? search.value("compression/\(t)")).map { $0 * s } } }.reduce(0, +)
        if bytes > 0 && need > b {
            let c = running / bytes
            let slope = bytes * Double(next) / Double(now)
            try setTarget(search, min(max(c - (need - b) / slope, 0), 1))
        }
        if spent >= maxSectionEpochs {
            logSection(epochs: spent)
            host.log("\(Self.id): section \(section + 2) (\(next) cells) still needs \(Self.format(UInt64(need))) > \(Self.format(UInt64(b))) after \(spent) epochs of pruning; the search ends at \(now) cells", level: .warning)
            return true
        }
        if lastEpoch { logSection(epochs: spent) }
        return false
    }

    /// The section's line in the log (what the tests and the run's note read).
    private func logSection(epochs: Int) {
        // The last grown section trains without the compression term: no target (paper: "None").
        let t = section > 0 && section + 1 == sectionCells.count ? "none" : Self.fixed(target, digits: 4)
        host.log("bonsai section \(section + 1): cells=\(sectionCells[section]) target=\(t) epochs=\(epochs) "
                 + "predicted=\(predictedAtStart) measured=\(measuredFirst ?? 0) budget=\((try? budget()) ?? 0)")
    }

    /// Removes candidates whose pruner stayed below 0 for deadhead_window epoch ends (never the
    /// highest w of an edge).
    private func deadhead(_ search: SearchServices) throws {
        let info = try search.spaceInfo()
        // Cell types added by a hyper-connected growth start with no history.
        while zeroEpochs.count < info.cellTypes { zeroEpochs.append(Array(repeating: 0, count: info.edges * info.ops)) }
        try deadheadInputs(search, info)
        for t in 0..<info.cellTypes {
            guard let a = try search.archView(cellType: t).logits.data else { continue }
            for e in 0..<info.edges {
                let idx = (0..<info.ops).map { e * info.ops + $0 }
                let best = idx.filter { a[$0].isFinite }.max { a[$0] < a[$1] }
                for i in idx {
                    let state = try search.opState(cellType: t, edge: e, op: i - e * info.ops)
                    guard state != .removed else { zeroEpochs[t][i] = 0; continue }
                    // Masked at a growth: it does not run, as if its pruner were below 0.
                    zeroEpochs[t][i] = a[i] < 0 || state == .masked ? zeroEpochs[t][i] + 1 : 0
                    if zeroEpochs[t][i] >= deadheadWindow && i != best {
                        try search.setOpState(cellType: t, edge: e, op: i - e * info.ops, .removed)
                        host.log("\(Self.id): deadheaded op \(search.opName(i - e * info.ops) ?? "?") on edge \(e) of cell type \(t)")
                    }
                }
            }
        }
    }

    /// Hyper-connected: an inter-cell input whose pruner stayed below 0 (or that was masked at a
    /// growth) for deadhead_window epoch ends is removed for good (its preprocessing is freed).
    /// A cell may lose every such input: its first input is then absent (the previous cell's
    /// output stays hard-wired).
    private func deadheadInputs(_ search: SearchServices, _ info: SearchServices.SpaceInfo) throws {
        guard info.hyperConnected else { return }
        while inputZeroEpochs.count < info.cells { inputZeroEpochs.append([]) }
        for c in 0..<info.cells {
            let v = try search.inputView(cell: c).logits
            guard let a = v.data else { continue }
            while inputZeroEpochs[c].count < v.count { inputZeroEpochs[c].append(0) }
            for j in 0..<v.count {
                let state = try search.inputState(cell: c, input: j)
                guard state != .removed else { inputZeroEpochs[c][j] = 0; continue }
                inputZeroEpochs[c][j] = a[j] < 0 || state == .masked ? inputZeroEpochs[c][j] + 1 : 0
                if inputZeroEpochs[c][j] >= deadheadWindow {
                    try search.setInputState(cell: c, input: j, .removed)
                    host.log("\(Self.id): deadheaded inter-cell input \(j == 0 ? "stem" : "cell \(j - 1)") of cell \(c)")
                }
            }
        }
    }

    // MARK: Saved state

    func saveState() throws -> [UInt8] {
        var w = StateWriter(format: 1)
        w.bool(started)
        w.int(section); w.int(sectionStart); w.double(target)
        w.u64(predictedAtStart)
        w.bool(measuredFirst != nil); w.u64(measuredFirst ?? 0)
        for counters in [zeroEpochs, inputZeroEpochs] { w.int(counters.count); for c in counters { w.ints(c) } }
        return w.bytes
    }

    func loadState(_ bytes: [UInt8]) throws {
        var r = try StateReader(bytes, format: 1, owner: Self.id)
        let started = try r.bool("started flag")
        let section = try r.int("section"), sectionStart = try r.int("section start"), target = try r.double("target")
        let predicted = try r.u64("predicted peak")
        let hasMeasured = try r.bool("has-measured flag"), measured = try r.u64("measured peak")
        let counters = try (0..<2).map { _ in try (0..<r.count("deadhead counters", itemBytes: 8)).map { _ in try r.ints("deadhead counters") } }
        try r.finish()
        guard section >= 0, section < sectionCells.count, sectionStart >= 0 else {
            throw PluginError.invalidArgument("\(Self.id): saved state is at section \(section + 1) of \(sectionCells.count) (section_cells \(sectionCells)); it was saved with other parameters")
        }
        guard target.isFinite, target >= 0, target <= 1 else { throw PluginError.invalidArgument("\(Self.id): saved state: target \(target) is not in [0, 1]") }
        self.started = started; self.section = section; self.sectionStart = sectionStart; self.target = target
        predictedAtStart = predicted; measuredFirst = hasMeasured ? measured : nil
        zeroEpochs = counters[0]; inputZeroEpochs = counters[1]
    }

    static func format(_ bytes: UInt64) -> String {
        bytes >= 1 << 20 ? "\(fixed(Double(bytes) / 1048576, digits: 2)) MiB (\(bytes) bytes)" : "\(bytes) bytes"
    }

    /// `x` (≥ 0) with `digits` decimals, without Foundation.
    static func fixed(_ x: Double, digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let n = UInt64((max(x, 0) * scale).rounded())
        let whole = n / UInt64(scale), frac = String(n % UInt64(scale))
        return "\(whole)." + String(repeating: "0", count: digits - frac.count) + frac
    }
}

extension BonsaiComponents {
    static let strategy = Component.strategy(
        BonsaiStrategy.self, id: BonsaiStrategy.id,
        summary: "Bonsai-Net: sections of cells grown inside a memory budget; saw-wave pruners trained with the compression loss until the next section's dry-run peak fits; "
            + "deadheading; the last section trains without the compression term",
        params: [
            .string("section_cells", default: "3,5,8", doc: "cell count after each section, growing, e.g. \"3,5,8\""),
            .string("budget", default: "", doc: "memory budget (bytes, or with KiB/MiB/GiB); empty = --memory-budget"),
            .double("margin", default: 0.02, doc: "share of the step's budget (budget less the dataset) kept free when deciding that the next section fits", min: 0, max: 0.99),
            .double("init", default: 0.1, doc: "pruner init w (paper: 0.1; later code 0.01), written through arch_view before the first step", min: 1e-6),
            .double("clamp_factor", default: 5, doc: "w is clamped to ±clamp_factor·init after every step (paper: 5)", min: 1),
            .int("min_section_epochs", default: 1, doc: "epochs a section trains at least before the next is added", min: 1),
            .int("max_section_epochs", default: 16, doc: "a section that cannot make the next fit within this many epochs ends the search", min: 1),
            .bool("grow_keeps_weights", default: true,
                  doc: "the host's grow copies every weight whose name and shape match into the grown network (false: fresh weights, P-DARTS's semantics)"),
            .int("warmup_epochs", default: 1, doc: "weight-only epochs at the start of each section (grow gives fresh weights; the pruners hold still)", min: 0),
            .int("deadhead_window", default: 2, doc: "epoch ends with w < 0 in a row after which a candidate is removed for good", min: 1),
            .bool("hyper_connected", default: false,
                  doc: "search the paper's relaxed space: distinct cells, each taking the previous cell plus a pruned sum of all earlier cells (a host space option)"),
            .string("reduction_cells", default: "",
                    doc: "cells that reduce (a host space option), e.g. \"2,5\"; empty: hyper-connected, those of the last section's depth (cells/3, 2·cells/3)"),
            .double("auxiliary_weight", default: 0.4,
                    doc: "hyper-connected growth: the old classifier becomes an auxiliary head; loss = main + w·aux (paper 0.2–0.4; 0 = drop it)", min: 0),
        ],
        requires: [.archParams, .hardGate])
}
