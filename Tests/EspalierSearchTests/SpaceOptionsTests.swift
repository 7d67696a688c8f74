// The space-option table (SpaceOption.all) against the three places that read it: SDK/README's
// generated section, `espalier plugins describe`, and SearchConfig.withStrategySpace (each
// declared option applied; a bad value refused naming the strategy, the option and what it accepts).
// ESPALIER_UPDATE_DOCS=1 rewrites SDK/README's section from the table instead of failing.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class SpaceOptionsTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    static let readme = PluginFixtures.repoRoot.appendingPathComponent("SDK/README.md")

    func testSDKReadmeSection_IsGeneratedFromTheTable() throws {
        let text = try String(contentsOf: Self.readme, encoding: .utf8)
        let begin = try XCTUnwrap(text.range(of: SpaceOption.readmeBegin), "SDK/README.md has no line \(SpaceOption.readmeBegin)")
        let end = try XCTUnwrap(text.range(of: SpaceOption.readmeEnd, range: begin.upperBound..<text.endIndex), "SDK/README.md has no line \(SpaceOption.readmeEnd)")
        let section = text[begin.upperBound..<end.lowerBound].trimmingCharacters(in: .newlines)
        if ProcessInfo.processInfo.environment["ESPALIER_UPDATE_DOCS"] == "1" && section != SpaceOption.readmeTable {
            try (text[..<begin.upperBound] + "\n" + SpaceOption.readmeTable + "\n" + text[end.lowerBound...]).write(to: Self.readme, atomically: true, encoding: .utf8)
            return
        }
        for o in SpaceOption.all {
            XCTAssertTrue(section.contains("`\(o.name)`") && section.contains(o.doc), "SDK/README.md's space options lack \(o.name): \(o.doc)")
        }
        XCTAssertEqual(section, SpaceOption.readmeTable, "SDK/README.md's space options differ from SpaceOption.all; run this test with ESPALIER_UPDATE_DOCS=1")
    }

    func testEveryOption_RefusesTextOutsideWhatItAccepts_NamingBoth() {
        for o in SpaceOption.all {
            XCTAssertThrowsError(try o.parse("banana"), o.name) {
                XCTAssertTrue("\($0)".hasPrefix("\(o.name) must be \(o.accepts) (got 'banana'"), "\($0)")
            }
        }
        XCTAssertThrowsError(try SpaceOption.named("reduction_cells")!.parse("1, -2")) {
            XCTAssertTrue("\($0)".hasSuffix("(got '1, -2': '-2' is not a cell index)"), "\($0)")
        }
    }

    func testWithStrategySpace_AppliesTheOptionsTheStrategyDeclares() throws {
        let reg = Self.registry
        var c = SearchConfig()
        c.strategySettings = ["partial_channels": "2", "edge_normalization": "off"]
        let pc = try c.withStrategySpace(try reg.require("espalier.strategy.pcdarts/1", kind: .strategy))
        XCTAssertEqual(pc.space.partialChannels, 2)
        XCTAssertFalse(pc.space.edgeNormalization)
        XCTAssertEqual(pc.bnRecalibrationBatches, nil, "PC-DARTS declares no bn_recalibration")
        // Defaults apply where nothing was set; a --bn-recalibration given wins over the strategy's.
        let gs = try SearchConfig().withStrategySpace(try reg.require("espalier.strategy.gsparsity/1", kind: .strategy))
        XCTAssertTrue(gs.space.scaleParameterFree && gs.space.affineOps && gs.space.sumOps)
        XCTAssertEqual(gs.bnRecalibrationBatches, 20)
        var given = SearchConfig(); given.bnRecalibrationBatches = 3
        XCTAssertEqual(try given.withStrategySpace(try reg.require("espalier.strategy.gsparsity/1", kind: .strategy)).bnRecalibrationBatches, 3)
        // Bonsai: section_cells is applied after hyper_connected, whatever their order in the strategy.
        var b = SearchConfig(); b.space.cells = 3
        b.strategySettings = ["hyper_connected": "true", "section_cells": "3,6,9"]
        let bonsai = try b.withStrategySpace(try reg.require("espalier.strategy.bonsai/1", kind: .strategy))
        XCTAssertTrue(bonsai.space.hyperConnected)
        XCTAssertEqual(bonsai.space.reductionCells, [3, 6])
        // A bad value names the strategy, the option and what it accepts.
        c.strategySettings = ["partial_channels": "0"]
        XCTAssertThrowsError(try c.withStrategySpace(try reg.require("espalier.strategy.pcdarts/1", kind: .strategy))) {
            XCTAssertEqual($0 as? EspalierError, .config("espalier.strategy.pcdarts/1: partial_channels must be an integer ≥ 1 (got '0')"))
        }
    }

    func testPluginsDescribe_MarksTheStrategysSpaceOptions() throws {
        _ = try Prerequisite.espalierBinary()
        let r = try EspalierProcess.run(["plugins", "describe", "espalier.strategy.pcdarts/1"], cwd: FileManager.default.temporaryDirectory.path)
        XCTAssertEqual(r.status, 0, r.output)
        let lines = r.output.split(separator: "\n").map(String.init)
        for name in ["partial_channels", "edge_normalization"] {
            let o = SpaceOption.named(name)!
            let i = try XCTUnwrap(lines.firstIndex { $0.hasPrefix("    \(name) ") }, r.output)
            XCTAssertTrue(lines[i + 1].contains("space option: \(o.doc)"), "the line beside \(name): \(lines[i + 1])")
        }
        XCTAssertFalse(r.output.contains("space option: \(SpaceOption.named("aggregator")!.doc)"), "only the options PC-DARTS declares")
    }
}
