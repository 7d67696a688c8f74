// FiGS in the common trainer: a short DARTS search whose space has the FiGS ops and the channel
// gate selected by the config (--channel-gate), the expected-cost regularizer pulling the mask
// logits down (more with a larger λ), the cost targets' structure, and the export of ⌊Σπ⌋ channels
// per mask (the exported op, built with those settings, has the mask's channel count). With the
// FiGS strategy (no α, ops summed): the exported network as a per-cell genotype whose weights have
// the masks' channel counts, an all-off op dropped, trainable by the discrete network; the FLOPs
// and memory targets equal the accountant's figures of the exported op at the masks' widths, and
// the regularizer's gradient on them matches finite differences.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class FigsSearchTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func config(lambda: Double) -> SearchConfig {
        var c = tinySearchConfig(ops: ["espalier.op.none/1", "espalier.op.skip_connect/1", "espalier.op.figs_sep_conv_3x3/1", "espalier.op.figs_dil_conv_3x3/1"],
                                 epochs: 2)
        c.channelGate = "espalier.gate.figs/1"
        c.channelGateSettings = ["tau": "0.001"]
        c.regularizers = ["espalier.regularizer.figs-cost/1"]
        c.regularizerSettings = ["espalier.regularizer.figs-cost/1": ["lambda": String(lambda), "cost": "params"]]
        return c
    }

    func makeRun(_ c: SearchConfig) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry)
    }

    /// Mean mask logit over every FiGS op of the supernet.
    func meanLogit(_ run: SearchRun) -> Double {
        let ps = run.supernet.weights.filter { $0.name.hasSuffix(".logits") && $0.name.contains("figs") }
        let n = ps.reduce(0) { $0 + $1.count }
        return ps.reduce(0.0) { s, p in (0..<p.count).reduce(s) { $0 + Double(p.value[$1]) } } / Double(max(n, 1))
    }

    func testSearch_CostRegularizerShrinksTheMasks_AndExportKeepsFloorOfSumPi() throws {
        var means: [Double] = []
        var exported: [ChannelMaskExport] = []
        var last: SearchRun?
        for lambda in [0.0, 2.0] {
            let run = try makeRun(config(lambda: lambda))
            XCTAssertEqual(meanLogit(run), 2.5, accuracy: 1e-6, "FiGS init ν = 2.5")
            try run.run()
            XCTAssertTrue(run.supernet.weights.allSatisfy { p in (0..<p.count).allSatisfy { p.value[$0].isFinite } })
            means.append(meanLogit(run))
            exported = try run.channelMaskExport()
            last = run
        }
        XCTAssertLessThan(means[1], means[0] - 0.01, "λ = 2 pulls the mask logits below the λ = 0 run's (\(means))")
        // Export: every FiGS op on every edge of both cells, ⌊Σσ(ν)⌋ channels per mask.
        let run = last!
        let edges = run.config.space.edgesPerCell
        XCTAssertEqual(exported.count, 2 * 2 * edges, "two FiGS ops per edge, two cells")
        for e in exported {
            let prefix = e.path + "/"
            for (mask, count) in e.channels {
                let p = run.supernet.weights.first { $0.name == prefix + mask }!
                let sum = (0..<p.count).reduce(0.0) { $0 + 1 / (1 + exp(-Double(p.value[$1]))) }
                XCTAssertEqual(count, Int(sum.rounded(.down)), "\(e.path) \(mask)")
                XCTAssertLessThanOrEqual(count, p.count)
            }
            // The widths to build at: ⌊Σπ_mid⌋ inside the op, C_out (summed at the width C) on its output.
            XCTAssertEqual(e.widths["mask_mid.logits"], e.op.contains("sep_conv") && e.kept ? e.channels["mask_mid.logits"] : nil)
            XCTAssertEqual(e.widths["mask_out.logits"], e.kept ? e.outChannels : nil)
            XCTAssertEqual(e.outChannels, run.supernet.weights.first { $0.name == prefix + "mask_out.logits" }!.count)
        }
        // The exported op built at those widths has the mask's channel count in its intermediate layer.
        let sep = exported.first { $0.op.contains("sep_conv") && $0.path.contains("cell0/") }!
        let c = run.supernet.weights.first { $0.name == sep.path + "/mask_out.logits" }!.count
        let op = try PluginOp(try Self.registry.require(sep.op, kind: .op), context: HostContext(), config: OpConfig(inChannels: c, outChannels: c, affine: true),
                              ownerPath: "exported", exportedWidths: sep.widths)
        let m = sep.channels["mask_mid.logits"]!
        XCTAssertEqual(op.parameters.first { $0.name == "exported/pw1.weight" }!.shape, [m, c, 1, 1])
        XCTAssertFalse(op.parameters.contains { $0.name.hasSuffix(".logits") }, "the exported op has no masks")
    }

    func testUnknownChannelGate_IsAClearError() throws {
        var c = config(lambda: 0)
        c.channelGate = "espalier.gate.nope/1"
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("espalier.gate.nope/1"), "\($0)") }
    }

    // MARK: The FiGS strategy: export, costs

    /// The FiGS search: no α, every edge sums skip_connect and the two FiGS convs.
    func figsConfig(cost: String = "params", lambda: Double = 0) -> SearchConfig {
        var c = config(lambda: lambda)
        c.strategy = "espalier.strategy.figs/1"
        c.space.ops = ["espalier.op.skip_connect/1", "espalier.op.figs_sep_conv_3x3/1", "espalier.op.figs_dil_conv_3x3/1"]
        c.regularizerSettings = ["espalier.regularizer.figs-cost/1": ["lambda": String(lambda), "cost": cost]]
        c.epochs = 1
        return c
    }

    func logits(_ run: SearchRun, _ suffix: String) -> Parameter {
        run.supernet.weights.first { $0.name.hasSuffix(suffix) }!
    }

    func set(_ p: Parameter, on: Int) {
        for i in 0..<p.count { p.value[i] = i < on ? 40 : -40 }
    }

    func testFigsStrategy_ExportedNetwork_HasTheMasksChannelCounts_DropsAllOffOps_AndTrains() throws {
        let run = try makeRun(figsConfig(lambda: 1e-3))
        XCTAssertTrue(run.supernet.space.sumOps && run.supernet.archParameters.isEmpty, "FiGS: no α, ops summed")
        try run.step(train: try run.trainLoader.nextCycling(accountant: run.accountant), valid: nil)
        // Cell 0 (C = 4): edge 0's sep conv keeps 2 intermediate channels, its dil conv's output mask is all off;
        // edge 2's sep conv loses its whole output. Cell 1 (reduction, C = 8): edge 0's dil conv keeps 5 outputs.
        set(logits(run, "cell0/edge0/figs_sep_conv_3x3/mask_mid.logits"), on: 2)
        set(logits(run, "cell0/edge0/figs_sep_conv_3x3/mask_out.logits"), on: 4)
        set(logits(run, "cell0/edge0/figs_dil_conv_3x3/mask_out.logits"), on: 0)
        set(logits(run, "cell0/edge2/figs_sep_conv_3x3/mask_out.logits"), on: 0)
        set(logits(run, "cell1/edge0/figs_dil_conv_3x3/mask_out.logits"), on: 5)
        let g = try run.derive()
        XCTAssertEqual(g, try Genotype.decode(Data(g.jsonText().utf8), file: "export"), "the per-cell genotype survives its JSON")
        let cells = try XCTUnwrap(g.perCell)
        XCTAssertEqual(cells.map(\.reduction), [false, true])
        XCTAssertEqual(cells.map(\.channels), [4, 8])
        let edges = run.config.space.edgesPerCell
        XCTAssertEqual(cells[0].edges.count, 3 * edges - 2, "two ops of cell 0 dropped, nothing else")
        XCTAssertEqual(cells[1].edges.count, 3 * edges)
        XCTAssertFalse(cells[0].edges.prefix(cells[0].nodeSizes[0]).contains(.init("figs_dil_conv_3x3", 0)), "the all-off dil conv on edge 0 is gone")
        XCTAssertEqual(cells[0].edges.filter { $0 == .init("figs_sep_conv_3x3", 0) }.count, 1, "edge 2 (node 1, input 0) lost its sep conv; edge 0 kept its")
        // The discrete network: its weights have the masks' counts, and no mask logits.
        var (net, d, acc, context) = try tinyDiscreteNetwork(g, registry: Self.registry)
        func shape(_ suffix: String) -> [Int]? { net.parameters.first { $0.name.hasSuffix(suffix) }?.shape }
        XCTAssertEqual(shape("cell0/node0/figs_sep_conv_3x3" + "1/pw1.weight"), [2, 4, 1, 1], "⌊Σπ_mid⌋ = 2 intermediate channels")
        XCTAssertEqual(shape("cell0/node0/figs_sep_conv_3x3" + "1/dw2.weight"), [2, 1, 3, 3])
        XCTAssertEqual(shape("cell0/node0/figs_sep_conv_3x3" + "1/pw2.weight"), [4, 2, 1, 1])
        XCTAssertFalse(net.parameters.contains { $0.name.hasSuffix(".logits") })
        let sepMid = try XCTUnwrap(cells[0].channelWidths).compactMap { $0["mask_mid.logits"].map(String.init) }
        XCTAssertEqual(sepMid.filter { $0 == "2" }.count, 1, "one sep conv at width 2; the others at ⌊4·σ(2.5)⌋ = 3")
        XCTAssertTrue(sepMid.allSatisfy { $0 == "2" || $0 == "3" }, "\(sepMid)")
        let before = net.parameterCount
        XCTAssertEqual(shape("cell1/node0/figs_dil_conv_3x3" + "2/pw.weight"), [8, 8, 1, 1], "a dil conv keeps its C outputs (summed at the width C)")
        // It trains.
        var tc = TrainConfig()
        tc.batchSize = 4
        let trainer = try ClassifierTrainer(model: net, accountant: acc, config: tc)
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        let w0 = net.parameters.first { $0.name.hasSuffix("pw1.weight") }!.value.array
        let (loss, _) = try trainer.trainStep(images: batch.images, labels: batch.labels)
        XCTAssertTrue(loss.isFinite)
        XCTAssertNotEqual(net.parameters.first { $0.name.hasSuffix("pw1.weight") }!.value.array, w0, "a step moves the weights")
        XCTAssertEqual(net.parameterCount, before)
        // Built with another C, or another number of cells: clear errors.
        d.channels = 8
        XCTAssertThrowsError(try DiscreteNetwork(d, registry: Self.registry, context: context, seed: 1)) { XCTAssertTrue("\($0)".contains("--channels 4"), "\($0)") }
        d.channels = 4; d.cells = 3
        XCTAssertThrowsError(try DiscreteNetwork(d, registry: Self.registry, context: context, seed: 1)) { XCTAssertTrue("\($0)".contains("2 cells"), "\($0)") }
    }

    func testGenotype_PerCellIsOptional_OldFilesLoad_AndBadEntriesAreClearErrors() throws {
        let old = #"{"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2], "reduce": [["max_pool_3x3", 0], ["sep_conv_3x3", 1]], "reduce_concat": [2]}"#
        let g = try Genotype.decode(Data(old.utf8), file: "old.json")
        XCTAssertNil(g.perCell)
        XCTAssertFalse(g.jsonText().contains("per_cell"))
        let bad = #"{"normal": [["sep_conv_3x3", 0]], "normal_concat": [2], "reduce": [["sep_conv_3x3", 0]], "reduce_concat": [2], "normal_node_sizes": [1], "reduce_node_sizes": [1], "per_cell": [{"reduction": false, "channels": 4, "edges": [["figs_sep_conv_3x3", 0]], "node_sizes": [1], "concat": [2], "op_settings": []}]}"#
        XCTAssertThrowsError(try Genotype.decode(Data(bad.utf8), file: "bad.json")) { XCTAssertTrue("\($0)".contains("op_settings"), "\($0)") }
        // channel_widths: one object per edge, every width ≥ 1.
        func cell(_ widths: String) -> String {
            #"{"normal": [["figs_sep_conv_3x3", 0]], "normal_concat": [2], "reduce": [["figs_sep_conv_3x3", 0]], "reduce_concat": [2], "normal_node_sizes": [1], "reduce_node_sizes": [1], "per_cell": [{"reduction": false, "channels": 4, "edges": [["figs_sep_conv_3x3", 0]], "node_sizes": [1], "concat": [2], "op_settings": [{}], "channel_widths": "#
                + widths + "}]}"
        }
        XCTAssertNoThrow(try Genotype.decode(Data(cell(#"[{"mask_mid.logits": 2, "mask_out.logits": 4}]"#).utf8), file: "ok.json"))
        XCTAssertThrowsError(try Genotype.decode(Data(cell("[{}, {}]").utf8), file: "two.json")) {
            XCTAssertTrue("\($0)".contains("2 \"channel_widths\" for 1 edges"), "\($0)")
        }
        XCTAssertThrowsError(try Genotype.decode(Data(cell(#"[{"mask_mid.logits": 0}]"#).utf8), file: "zero.json")) {
            XCTAssertTrue("\($0)".contains("'mask_mid.logits' the width 0"), "\($0)")
        }
    }

    func testDeadEnd_LastCellOrTwoCellsInARowWithoutOps() throws {
        func gene(_ ops: Int, reduction: Bool = false) -> Genotype.CellGene {
            Genotype.CellGene(reduction: reduction, channels: reduction ? 8 : 4, edges: Array(repeating: .init("skip_connect", 0), count: ops),
                              nodeSizes: [ops, 0], concat: [2, 3], opSettings: Array(repeating: [:], count: ops))
        }
        func description(_ cells: [Genotype.CellGene]) -> NetworkDescription {
            var g = Genotype(normal: cells[0].edges, normalConcat: [2, 3], reduce: cells[0].edges, reduceConcat: [2, 3])
            g.normalNodeSizes = cells[0].nodeSizes; g.reduceNodeSizes = cells[0].nodeSizes
            g.perCell = cells
            var d = NetworkDescription(genotype: g)
            d.channels = 4; d.cells = cells.count
            return d
        }
        XCTAssertNil(description([gene(1), gene(1, reduction: true)]).deadEnd)
        XCTAssertNil(description([gene(1), gene(0, reduction: true), gene(1, reduction: true)]).deadEnd, "one empty cell: the next reads the one before")
        XCTAssertEqual(description([gene(1), gene(1, reduction: true), gene(0, reduction: true)]).deadEnd, "cell 2, the last, kept no op (empty cells: [2])")
        XCTAssertEqual(description([gene(1), gene(0, reduction: true), gene(0, reduction: true), gene(1, reduction: true)]).deadEnd,
                       "cells 1 and 2 both kept no op (empty cells: [1, 2])")
    }

    /// Π_parts Σ_i c_i·σ(ν_i) of one target, computed here.
    func expectedCost(_ t: RegularizerTarget) -> Double {
        var product = 1.0
        for (v, c) in zip(t.values, t.costs!) {
            var sum = 0.0
            for i in 0..<v.count { sum += Double(c[i]) / (1 + exp(-Double(v[i]))) }
            product *= sum
        }
        return product
    }

    func exportedFigure(_ id: String, c: Int, mid: Int?, input: [Int]) throws -> (flops: Double, bytes: Double) {
        try exportedOpFigure(id, c: c, mid: mid, input: input, registry: Self.registry)
    }

    func testFlopsAndMemoryTargets_AreTheAccountantsFiguresOfTheExportedOp_AndTheGradientMatchesFiniteDifferences() throws {
        let run = try makeRun(figsConfig(cost: "flops", lambda: 1e-6))
        try run.step(train: try run.trainLoader.nextCycling(accountant: run.accountant), valid: nil)
        let op = "cell0/edge2/figs_sep_conv_3x3", dil = "cell0/edge2/figs_dil_conv_3x3"
        let input = [4, 4, 8, 8]   // batch 4, C = 4, 8×8, stride 1 (edge 2 reads node 0)
        for m in [1, 3] {
            set(logits(run, op + "/mask_mid.logits"), on: m)
            set(logits(run, op + "/mask_out.logits"), on: 4)
            set(logits(run, dil + "/mask_out.logits"), on: 4)
            let targets = try run.channelMaskTargets()
            func expected(_ path: String, _ kind: String) throws -> Double {
                let mine = targets.filter { $0.name.hasPrefix("channels/") && $0.name.contains(path + "/") && $0.name.hasSuffix("/" + kind) }
                XCTAssertEqual(mine.count, path.contains("sep") ? 2 : 1, "\(path) \(kind): \(mine.map(\.name))")
                return mine.reduce(0.0) { $0 + expectedCost($1) }
            }
            let ref = try exportedFigure("espalier.op.figs_sep_conv_3x3/1", c: 4, mid: m, input: input)
            XCTAssertEqual(try expected(op, "flops"), ref.flops, accuracy: ref.flops * 1e-5, "hard masks keeping \(m) channels: the op built with \(m)")
            XCTAssertEqual(try expected(op, "memory"), ref.bytes, accuracy: ref.bytes * 1e-5)
            let dref = try exportedFigure("espalier.op.figs_dil_conv_3x3/1", c: 4, mid: nil, input: input)
            XCTAssertEqual(try expected(dil, "flops"), dref.flops, accuracy: dref.flops * 1e-5)
        }
        // Half the outputs on: the expected cost halves.
        set(logits(run, op + "/mask_out.logits"), on: 2)
        let half = try run.channelMaskTargets().filter { $0.name.contains(op + "/") && $0.name.hasSuffix("/flops") }
        let ref = try exportedFigure("espalier.op.figs_sep_conv_3x3/1", c: 4, mid: 3, input: input)
        let e = half.reduce(0.0) { $0 + expectedCost($1) }
        XCTAssertEqual(e, ref.flops / 2, accuracy: ref.flops * 1e-5)
        // Gradient of λ·E_flops against finite differences, at soft masks.
        let mid = logits(run, op + "/mask_mid.logits"), out = logits(run, op + "/mask_out.logits")
        for (i, p) in [mid, out].enumerated() { for j in 0..<p.count { p.value[j] = Float(j) * 0.7 - 1.1 + Float(i) * 0.4 } }
        let reg = try XCTUnwrap(run.regularizers.first)
        for p in [mid, out] { try p.ensureGrad().fill(0) }
        let total = try reg.loss(try run.channelMaskTargets())
        XCTAssertGreaterThan(total, 0)
        let analytic = [mid, out].map { p in (0..<p.count).map { Double(p.grad![$0]) } }
        for (k, p) in [mid, out].enumerated() {
            for j in 0..<p.count {
                let old = p.value[j], eps: Float = 1e-2
                p.value[j] = old + eps; let lp = try reg.loss(try run.channelMaskTargets())
                p.value[j] = old - eps; let lm = try reg.loss(try run.channelMaskTargets())
                p.value[j] = old
                let fd = (lp - lm) / Double(2 * eps)
                XCTAssertEqual(analytic[k][j], fd, accuracy: 1e-3 * max(abs(fd), 1e-3), "∂R/∂ν[\(j)] of \(p.name)")
            }
        }
    }

    func testMaskLogits_AreLeftOutOfTheGradientClip() throws {
        var c = figsConfig(lambda: 0.5)
        c.gradClip = 1e-6
        let run = try makeRun(c)
        let nu = logits(run, "cell0/edge0/figs_sep_conv_3x3/mask_mid.logits"), w = logits(run, "cell0/edge0/figs_sep_conv_3x3/pw1.weight")
        let nu0 = nu.value.array, w0 = w.value.array
        try run.step(train: try run.trainLoader.nextCycling(accountant: run.accountant), valid: nil)
        let lr = run.weightOptimizer.learningRate
        for i in 0..<nu.count {
            XCTAssertEqual(nu.value[i], nu0[i] - lr * nu.grad![i], accuracy: 1e-6, "first SGD step on a mask logit: −lr·g, unclipped")
        }
        XCTAssertTrue((0..<nu.count).contains { abs(nu.grad![$0]) > 1e-3 }, "λ = 0.5 gives the masks a gradient")
        let moved = zip(w.value.array, w0).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(moved, 1e-4, "the other weights' gradient is clipped to norm 1e-6 (only weight decay moves them)")
    }
}
