// FiGS in the common trainer: a short DARTS search whose space has the FiGS ops and the channel
// gate selected by the config (--channel-gate), the expected-cost regularizer pulling the mask
// logits down (more with a larger λ), the cost targets' structure, and the export of ⌊Σπ⌋ channels
// per mask (the exported op, built with those settings, has the mask's channel count).

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class FigsSearchTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func config(lambda: Double) -> SearchConfig {
        var c = SearchConfig()
        c.space.channels = 4
        c.space.cells = 2
        c.space.nodes = 2
        c.space.multiplier = 2
        c.space.stemMultiplier = 1
        c.space.reductionCells = [1]
        c.space.ops = ["espalier.op.none/1", "espalier.op.skip_connect/1", "espalier.op.figs_sep_conv_3x3/1", "espalier.op.figs_dil_conv_3x3/1"]
        c.channelGate = "espalier.gate.figs/1"
        c.channelGateSettings = ["tau": "0.001"]
        c.regularizers = ["espalier.regularizer.figs-cost/1"]
        c.regularizerSettings = ["espalier.regularizer.figs-cost/1": ["lambda": String(lambda), "cost": "params"]]
        c.batchSize = 4
        c.epochs = 2
        c.seed = 5
        return c
    }

    func makeRun(_ c: SearchConfig) throws -> SearchRun {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: c.seed)
        let ds = try acc.withOwner("dataset") { try Dataset.synthetic(count: 16, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc) }
        return try SearchRun(config: c, registry: Self.registry, context: context, train: ds.all, outDirectory: nil)
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
            exported = run.channelMaskExport()
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
                let p = run.supernet.weights.first { $0.name == prefix + mask + ".logits" }!
                let sum = (0..<p.count).reduce(0.0) { $0 + 1 / (1 + exp(-Double(p.value[$1]))) }
                XCTAssertEqual(count, max(1, Int(sum.rounded(.down))), "\(e.path) \(mask)")
                XCTAssertLessThanOrEqual(count, p.count)
            }
            XCTAssertEqual(e.settings["mid_channels"].map { Int($0)! }, e.op.contains("sep_conv") ? e.channels["mask_mid"] : nil)
        }
        // The exported op built with those settings has the mask's channel count in its intermediate layer.
        let sep = exported.first { $0.op.contains("sep_conv") && $0.path.contains("cell0/") }!
        let c = run.supernet.weights.first { $0.name == sep.path + "/mask_out.logits" }!.count
        let op = try PluginOp(try Self.registry.require(sep.op, kind: .op), context: HostContext(), config: OpConfig(inChannels: c, outChannels: c, affine: true),
                              settings: sep.settings, ownerPath: "exported")
        let m = sep.channels["mask_mid"]!
        XCTAssertEqual(op.parameters.first { $0.name == "exported/pw1.weight" }!.shape, [m, c, 1, 1])
        XCTAssertEqual(op.parameters.first { $0.name == "exported/mask_mid.logits" }!.shape, [m])
    }

    func testUnknownChannelGate_IsAClearError() throws {
        var c = config(lambda: 0)
        c.channelGate = "espalier.gate.nope/1"
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("espalier.gate.nope/1"), "\($0)") }
    }
}
